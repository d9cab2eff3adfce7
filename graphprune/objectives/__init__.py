"""What pruning saves: parameters and MACs counted per op, onnxruntime latency, and the machine's channel step."""
