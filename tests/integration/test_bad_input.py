"""Bad input gets one line naming the input and the fix, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli import run_tracekit
from tests.trace_check import assert_trace_ok

pytestmark = pytest.mark.integration

RAW = Path(__file__).parents[1] / "data" / "raw" / "mixed5"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_tracekit(*args, env={"COLUMNS": "200"})


def one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    for n in needles:
        assert n in out.stderr, out.stderr


@pytest.fixture(scope="module")
def good_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t") / "good.pftrace"
    r = run("export", str(RAW), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert_trace_ok(out)
    return out


def test_summary_missing_file(tmp_path: Path) -> None:
    one_line_error(run("summary", str(tmp_path / "nope.pftrace")), "does not exist")


def test_summary_truncated(tmp_path: Path, good_trace: Path) -> None:
    bad = tmp_path / "cut.pftrace"
    data = good_trace.read_bytes()
    bad.write_bytes(data[: len(data) // 2 + 3])
    out = run("summary", str(bad))
    one_line_error(out, str(bad))


def test_summary_not_perfetto(tmp_path: Path) -> None:
    for name, data in (
        ("empty.pftrace", b""),
        ("text.pftrace", b'{"json": true}\n' * 50),
        ("noise.pftrace", os.urandom(4096)),
    ):
        bad = tmp_path / name
        bad.write_bytes(data)
        one_line_error(run("summary", str(bad)), str(bad))


def test_summary_good(good_trace: Path) -> None:
    out = run("summary", str(good_trace), "--json")
    assert out.returncode == 0, out.stderr


def test_unwritable_output(tmp_path: Path, guest_assets: object) -> None:
    one_line_error(
        run("record", "--scenario", "ipi", "-o", "/proc/tracekit.pftrace"),
        "/proc/tracekit",
        "writable",
    )


def test_output_must_be_pftrace(tmp_path: Path, guest_assets: object) -> None:
    one_line_error(run("record", "-o", str(tmp_path / "x.json")), ".pftrace")


def test_unknown_probe_set(guest_assets: object) -> None:
    one_line_error(run("record", "--probes", "linux-9.9"), "unknown probe set", "linux-6.1")


def test_malformed_probe_set(tmp_path: Path, guest_assets: object) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('kernel = "x"\ndescription = "y"\n[[probe]]\nname = "a"\nsymbl = "b"\n')
    one_line_error(run("record", "--probes", str(bad)), "unknown key 'symbl'", "symbol")


def test_probe_with_missing_symbol_and_no_fallback(tmp_path: Path, guest_assets: object) -> None:
    text = (Path(__file__).parents[2] / "configs/probes/linux-6.1.toml").read_text()
    bad = tmp_path / "p.toml"
    bad.write_text(text.replace('symbol = "handle_exit"', 'symbol = "handle_exit_gone"', 1))
    one_line_error(run("record", "--probes", str(bad)), "handle_exit_gone is absent", "fallback")


def test_export_of_non_recording(tmp_path: Path) -> None:
    one_line_error(run("export", str(tmp_path)), "meta.json")


def test_query_without_binary(good_trace: Path) -> None:
    env_free = run("query", str(good_trace), "select 1")
    one_line_error(env_free, "trace_processor_shell")


def test_kernel_path_missing() -> None:
    one_line_error(run("guest", "build", "--kernel", "/nonexistent/Image"), "does not exist")


def test_kernel_not_an_arm64_image(tmp_path: Path) -> None:
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(4096))
    one_line_error(run("guest", "build", "--kernel", str(bad)), "not an arm64 Image")


def test_kernel_image_without_kallsyms(tmp_path: Path) -> None:
    header = Path(__file__).parents[1] / "data/kernel/image-header-6.1.0-56-cloud-arm64.bin"
    fake = tmp_path / "Image"
    fake.write_bytes(header.read_bytes() + bytes(1 << 20))
    one_line_error(run("guest", "build", "--kernel", str(fake)), "kallsyms")


def test_kernel_without_kvm_is_refused(tmp_path: Path, guest_assets, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The real Image and parser; KVM's symbols are asked under names it does not have."""
    from tracekit.config import load_guest_config
    from tracekit.errors import KernelImageError
    from tracekit.guest import kernel

    monkeypatch.setattr(kernel, "KVM_SYMBOLS", ("kvm_arch_vcpu_ioctl_run_missing",))
    with pytest.raises(KernelImageError, match=r"has no KVM .*CONFIG_KVM=y"):
        kernel.build_kernel_from_file(
            guest_assets.image_path, load_guest_config(), tmp_path, True, lambda _m: None
        )


def test_explain_bad_choices(good_trace: Path, tmp_path: Path) -> None:
    one_line_error(run("explain", str(good_trace), "--chain", "999"), "no chain 999", "chains 0..")
    one_line_error(run("explain", str(good_trace), "--class", "msi"), "class 'msi'", "classes")
    one_line_error(run("explain", str(good_trace), "--intid", "77"), "INTID 77", "INTIDs")
    junk = tmp_path / "junk.pftrace"
    junk.write_bytes(os.urandom(2048))
    out = run("explain", str(junk))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_qemu_refusing_to_start_is_explained_by_its_own_words(tmp_path: Path) -> None:
    """A QEMU that exits at start-up (here: refusing the plugin, as QEMU 10 refused a v1
    plugin) is reported with its own last lines, not only as a socket error."""
    fake = tmp_path / "qemu-system-aarch64"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "QEMU emulator version 7.2.22"; exit 0; fi\n'
        'echo "qemu-system-aarch64: -plugin tk_timebase.so: Could not load plugin:'
        ' undefined symbol: qemu_plugin_register_vcpu_tb_exec_inline" >&2\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    out = run_tracekit(
        "record", "--scenario", "ipi", "-o", str(tmp_path / "t.pftrace"),
        env={"TRACEKIT_QEMU": str(fake), "COLUMNS": "300"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "QEMU exited during start-up (code 1)" in out.stderr, out.stderr
    assert "undefined symbol: qemu_plugin_register_vcpu_tb_exec_inline" in out.stderr


def test_plugin_values_on_a_qemu_below_plugin_api_4_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    """QEMU 7.2's plugins cannot read registers or memory: --plugin-values says so and
    what to do, before QEMU starts."""
    fake = tmp_path / "qemu-system-aarch64"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "QEMU emulator version 7.2.22"; exit 0; fi\n'
        f"touch {tmp_path}/started; exit 1\n"
    )
    fake.chmod(0o755)
    out = run_tracekit(
        "record", "--scenario", "ipi", "--plugin-values", "-o", str(tmp_path / "t.pftrace"),
        env={"TRACEKIT_QEMU": str(fake), "COLUMNS": "300"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "--plugin-values needs a QEMU whose TCG plugin API is >= 4" in lines[0]
    assert "speaks API 1" in lines[0] and "TRACEKIT_QEMU" in lines[0]
    assert not (tmp_path / "started").exists()
