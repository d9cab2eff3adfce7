"""What a person reads: the report and its terminal table, inspect's summary and its HTML view,
progress on a terminal.
"""
