"""The command-line commands: each module exposes ``add_arguments(parser)`` and ``run(args)``."""
