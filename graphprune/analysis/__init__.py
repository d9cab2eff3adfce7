"""What can be pruned: the dependency graph of coupled dims and its groups (from the op rules),
residual blocks, the consumers that sum over a group, plans over groups, and graph
inputs/outputs paired as carried state.
"""
