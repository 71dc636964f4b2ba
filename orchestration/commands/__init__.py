"""`avatarpipe` subcommands beyond `run`; each module exposes `register(subparsers)`."""
