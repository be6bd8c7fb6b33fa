"""Entry point: the click group, and errors turned into one-line messages and exit codes.

Exit codes: 0 success, 2 user error (bad input, with the fix in the message), 1 internal fault.
``--debug`` (or GPUPRUNE_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from gpuprune import __version__
from gpuprune.errors import UserError

# OSErrors of the environment the user can fix, each with its fix.
_SPACE = "free some space or choose another folder"
_PERMS = "fix the folder's permissions or choose another folder"
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: _SPACE, errno.EDQUOT: _SPACE, errno.EROFS: _PERMS, errno.EACCES: _PERMS,
    errno.EPERM: _PERMS, errno.ENAMETOOLONG: "choose a shorter file name",
    errno.ENOTDIR: "choose a path whose parent is a folder",
    errno.EISDIR: "pass a file name, not a folder",
}  # fmt: skip
INTERRUPTED = "interrupted; finished results are kept, rerun to resume"


def _debug_env() -> bool:
    """GPUPRUNE_DEBUG=1 (or true/yes/on) shows tracebacks; 0, false, no, off or empty do not."""
    return os.environ.get("GPUPRUNE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="gpuprune")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Prune CNNs at the finest granularity a GPU can skip, and run kernels that skip it."""
    if debug:
        os.environ["GPUPRUNE_DEBUG"] = "1"


def _register() -> None:
    # Each command lives in its own module; they are imported here so `gpuprune --help` lists all.
    from gpuprune.cli import targets

    cli.add_command(targets.targets)
    from gpuprune.cli import prune as prune_cli

    cli.add_command(prune_cli.prune_cmd)
    cli.add_command(prune_cli.inspect_cmd)
    from gpuprune.cli import compile as compile_cli

    cli.add_command(compile_cli.compile_cmd)
    from gpuprune.cli import train as train_cli

    cli.add_command(train_cli.train)
    from gpuprune.cli import report as report_cli
    from gpuprune.cli import run as run_cli

    cli.add_command(run_cli.run)
    cli.add_command(report_cli.report)
    from gpuprune.cli import bench as bench_cli

    cli.add_command(bench_cli.bench)
    from gpuprune.cli import codesign as codesign_cli

    cli.add_command(codesign_cli.codesign_cmd)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, from the console script, exits with) the exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or _debug_env()
    if not [a for a in args if a != "--debug"]:  # bare `gpuprune`: the help, not an error line
        click.echo(cli.get_help(click.Context(cli, info_name="gpuprune")))
        return _exit(0, argv)
    try:
        code = cli.main(args=args, prog_name="gpuprune", standalone_mode=False) or 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:  # usage errors: bad option, missing argument
        # one line like every other user error, with where to look for the right usage
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "gpuprune"
        msg = " ".join(exc.format_message().split())
        click.echo(f"error: {msg.rstrip('.')}; see '{where} --help'", err=True)
        code = 2
    except click.exceptions.Abort:  # click's name for Ctrl-C (KeyboardInterrupt)
        click.echo(INTERRUPTED, err=True)
        code = 130
    except UserError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        code = 2
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        code = 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            # the machine, not gpuprune: a full disk or a forbidden folder is the user's to fix
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(
                f"error: {os.strerror(exc.errno)}{where}; {_ENVIRONMENT_ERRNOS[exc.errno]}, "
                "then rerun: finished results are kept",
                err=True,
            )
            return _exit(2, argv)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(
            f"internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)",
            err=True,
        )
        code = 1
    return _exit(code, argv)


def _exit(code: int, argv: list[str] | None) -> int:
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
