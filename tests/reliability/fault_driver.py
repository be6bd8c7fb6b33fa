"""Run ``gpuprune ARGS`` in a subprocess that stops at a chosen point, so a test can SIGKILL it.

Usage: ``python fault_driver.py [--pause-step N] [--when-exists GLOB] [--pause-in-save] -- ARGS``.
At the pause the process prints ``PAUSED`` and sleeps; the test kills it there:

* ``--pause-step N``: just before training step N (counted over all epochs), i.e. mid-epoch;
* ``--when-exists GLOB``: only once a file matching GLOB exists (e.g. the first checkpoint);
* ``--pause-in-save``: in the middle of writing a checkpoint (half of its bytes written).
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import time


def _pause() -> None:
    os.write(1, b"PAUSED\n")  # straight to the pipe: rich may be redirecting sys.stdout
    time.sleep(600)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-step", type=int)
    parser.add_argument("--when-exists")
    parser.add_argument("--pause-in-save", action="store_true")
    opts, rest = parser.parse_known_args()
    args = rest[1:] if rest[:1] == ["--"] else rest

    import torch

    import gpuprune.train.loop as loop
    from gpuprune.cli.main import main as cli_main

    torch.set_num_threads(1)

    def armed() -> bool:
        return opts.when_exists is None or bool(glob.glob(opts.when_exists))

    if opts.pause_step is not None:
        real_lr_at = loop.lr_at

        def lr_at(cfg, step, total):
            if step == opts.pause_step and armed():
                _pause()
            return real_lr_at(cfg, step, total)

        loop.lr_at = lr_at
    if opts.pause_in_save:
        real_save = torch.save

        def save(obj, fh, *a, **k):
            if not armed():
                return real_save(obj, fh, *a, **k)
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            fh.write(data[: len(data) // 2])
            fh.flush()
            _pause()

        loop.torch.save = save
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
