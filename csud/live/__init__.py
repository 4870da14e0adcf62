"""Live viewing: operators and their sessions, the fan-out of fMP4 fragments to viewers, the wall.

Only communes with ``service = "live"`` are ever streamed, and only to an operator whose account
lists that commune (CSI R252-12). docs/live.md describes the whole path.
"""
