"""`avatarpipe` commands: one click command (or group) per module, listed in `orchestration/cli.py`;
`common.py` holds what they share (settings, the clean stdout, `--json`, the one emitter)."""
