"""``python -m ghost_vision COMMAND ...``: the same as the ``ghost-vision`` console command."""

from ghost_vision.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
