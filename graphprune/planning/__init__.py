"""Choosing what goes: criteria, allocation to a ratio or a target, cost and latency models,
sensitivity, head counts kept even.
"""
