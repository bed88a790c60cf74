"""The command line: `python -m helpers <command>` (cli: the parser, one sub-command per module that has
`add_command`, and the exit codes 0 done, 2 input or environment, 130 interrupted, 1 a bug), bench (input
pipeline and training throughput) and doctor (does this device compute what the CPU computes?).

May import: every other wing.
"""
