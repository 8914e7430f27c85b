"""The in-process CLI runner shared by the tests of tests/runner and tests/resume (tests/ is on sys.path)."""
from bilevel.app import cli


def main(argv, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
