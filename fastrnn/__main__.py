"""``python -m fastrnn info`` prints what this installation can run (see fastrnn.info);
``python -m fastrnn imdb ...`` runs the IMDB comparison job (same as ``fastrnn-imdb``)."""
import sys

USAGE = """usage: python -m fastrnn {info,imdb} [args]
  info   versions, available backends (and why not), CPU ISA, numba, threads, CUDA
  imdb   the IMDB comparison job; `python -m fastrnn imdb --help` for its options"""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv.pop(0) if argv else "info"
    if cmd == "info":
        if argv:
            print(USAGE, file=sys.stderr)
            return 2
        from .info import info
        print(info())
        return 0
    if cmd == "imdb":
        from .imdb import main as imdb_main
        return imdb_main(argv)
    if cmd in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    print(f"unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
