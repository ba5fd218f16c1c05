"""What every command line of jaxvad shares: the `--config` flag (an ml_collections config file,
`FILE[:variant]` with variant a model name and/or "tiny", comma-separated; any field overridable
as `--config.a.b=v`) and running a command with clear errors: a bad flag or config value
(`jaxvad.config.ConfigError`) is one line and exit status 2, a known user error (bad data, a
checkpoint that does not fit, ...) is one line and exit status 1, anything else a traceback.
A command runs on TCMalloc where it is installed (`jaxvad.allocator`: XLA:CPU's steps run about
1.25× as fast on it). Before the command runs, JAX's CPU backend is split into the devices
`config.mesh.cpu_devices` asks for (`jaxvad.distributed.use_cpu_cores`).

Flags are defined when a command starts, not at import, so modules stay importable side by side.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxvad import distributed
from jaxvad.config import ConfigError, batch_sizes


def define_config_flag() -> flags.FlagHolder:
    return config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/ped2.py")


def _parse_flags(
    config: flags.FlagHolder, usage: str, config_optional: bool
) -> Callable[[list[str]], list[str]]:
    def parse(argv: list[str]) -> list[str]:
        try:
            args = flags.FLAGS(argv)
            if not (config_optional and config.value is None):
                config.value.is_locked  # noqa: B018  (config_flags defers its errors to here)
            return args
        except flags.Error as e:
            lines = str(e).strip().splitlines()  # A config file's error comes with a traceback.
            message = f"{lines[0]} {lines[-1]}" if len(lines) > 1 else lines[0]
        except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
            while isinstance(e, BaseException) and e.args:  # AttributeError(KeyError(...)).
                e = e.args[0]
            message = " ".join(str(e).split())
        print(f"error: {message}\nusage: {usage}", file=sys.stderr)
        sys.exit(2)

    return parse


def run(
    command: Callable[[], object],
    *,
    config: flags.FlagHolder,
    usage: str,
    user_errors: tuple[type[Exception], ...] = (),
    config_optional: bool = False,
) -> NoReturn:
    """Parses the flags, then runs `command()`; `user_errors` are reported as one line.
    `--config` is required unless `config_optional`."""

    def main(argv: list[str]) -> int:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        # Orbax logs every file it writes at INFO; jaxvad's own logs stay at INFO.
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("jaxvad").setLevel(logging.INFO)
        if config.value is not None:
            distributed.use_cpu_cores(config.value.mesh.cpu_devices, batch_sizes(config.value))
        try:
            command()
        except ConfigError as e:
            print(f"error: {e}\nusage: {usage}", file=sys.stderr)
            return 2
        except user_errors as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    parse = _parse_flags(config, usage, config_optional)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse)
    raise AssertionError("unreachable: app.run exits")
