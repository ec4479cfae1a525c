"""``python -m ocibuild`` and the ``ocibuild`` command.

Loading the command takes a moment; a Ctrl-C in it gets the same one line as one during the build, not a traceback.
"""

import sys


def run() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("ocibuild: interrupted; nothing was written at the destination", file=sys.stderr)
        exec("")  # see cli.main: the exit code is ours, not a death by SIGINT
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
