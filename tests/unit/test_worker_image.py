"""The worker image asks no more of a node's NVIDIA driver than its torch wheels need.

An ``nvidia/cuda:12.8`` base sets ``NVIDIA_REQUIRE_CUDA=cuda>=12.8``: the NVIDIA container
runtime then refuses every node whose driver predates CUDA 12.8, although the cu128 wheels carry
their own CUDA runtime and run on any CUDA 12 driver (minor version compatibility). Read from the
Dockerfile as Docker reads it: build-argument defaults, continuation lines, the last stage.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "worker" / "Dockerfile"
README = REPO / "images" / "README.md"
# What the wheels need: a driver of the CUDA 12 family (NVIDIA's minor version compatibility table).
WHEELS_NEED = (12, 0)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comment lines dropped and continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def final_stage(text: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(base image, build-argument defaults, ENV of the last stage), ARGs expanded."""
    args: dict[str, str] = {}
    base, env = "", {}
    for word, rest in instructions(text):
        expand = lambda s: re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), s)  # noqa: E731
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value.strip('"')
        elif word == "FROM":
            base, env = expand(rest.split()[0]), {}
        elif word == "ENV":
            for pair in shlex.split(rest):
                name, value = pair.split("=", 1)
                env[name] = expand(value)
    return base, args, env


def _cuda_floor(requirement: str) -> tuple[int, int]:
    found = re.fullmatch(r"cuda>=(\d+)\.(\d+)", requirement.strip())
    assert found, f"NVIDIA_REQUIRE_CUDA={requirement!r}: expected one 'cuda>=MAJOR.MINOR' condition"
    return int(found[1]), int(found[2])


def test_the_base_sets_no_cuda_requirement_above_what_the_wheels_need():
    base, args, env = final_stage(DOCKERFILE.read_text())
    assert not base.startswith(("nvidia/cuda", "nvcr.io/nvidia")), base  # those set cuda>=their toolkit
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base) and not base.endswith(":latest"), base
    # the wheels: CUDA 12 builds
    assert re.search(r"/whl/cu12\d$", args["TORCH_INDEX_URL"]), args["TORCH_INDEX_URL"]
    # what the image asks of the driver is exactly what they need
    assert _cuda_floor(env["NVIDIA_REQUIRE_CUDA"]) == WHEELS_NEED
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin sets it; "all" would leak GPUs


def test_the_reader_sees_what_an_nvidia_cuda_base_would_ask():
    # the case this guards against, read by the same code: it must fail the check above
    text = ("ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04\nFROM ${CUDA_IMAGE}\n"
            "ENV NVIDIA_REQUIRE_CUDA=\"cuda>=12.8 brand=tesla,driver>=470\" \\\n    A=1\n")
    base, _, env = final_stage(text)
    assert base == "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04" and env["A"] == "1"
    assert env["NVIDIA_REQUIRE_CUDA"].startswith("cuda>=12.8")


def test_the_minimum_driver_is_documented():
    text = " ".join(README.read_text().split())
    assert "525.60.13" in text and "NVIDIA_REQUIRE_CUDA" in text
