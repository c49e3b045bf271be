"""The kernel is chosen, never drifted into: version from the Image, probe set by family,
guest packages from the pinned suite through the host's own mirror."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import run_tracekit
from tracekit.errors import ConfigError, GuestBuildError, KernelImageError
from tracekit.guest.debian import host_codename, host_mirrors
from tracekit.kernel.version import family_of, read_kernel_version
from tracekit.probes.select import KernelMismatch, available_probe_sets, choose_probe_set

BANNER_61 = (
    b"Linux version 6.1.0-57-cloud-arm64 (debian-kernel@lists.debian.org) (gcc-12 (Debian"
    b" 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP Debian"
    b" 6.1.192-3 (2026-11-26)\n"
)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("release", "family"),
    [
        ("6.1.0-57-cloud-arm64", "6.1"),
        ("6.12.57+deb13-cloud-arm64", "6.12"),
        ("6.12.117", "6.12"),
        ("custom", ""),
    ],
)
def test_family_of(release: str, family: str) -> None:
    assert family_of(release) == family


@pytest.mark.unit
def test_version_from_the_banner() -> None:
    # The first copy is the %s format of linux_proc_banner in some builds; the last wins.
    image = b"\0" * 64 + b"Linux version %s (%s)\0" + b"\0" * 16 + BANNER_61 + b"\0"
    v = read_kernel_version(image)
    assert (v.release, v.family) == ("6.1.0-57-cloud-arm64", "6.1")
    assert v.banner.endswith("6.1.192-3 (2026-11-26)")
    with pytest.raises(KernelImageError, match="no 'Linux version' banner"):
        read_kernel_version(b"\0" * 4096, source="x.img")


@pytest.mark.unit
def test_probe_sets_name_their_kernel() -> None:
    sets = {s.name: s.kernel for s in available_probe_sets()}
    assert sets["linux-6.1"] == "6.1"
    assert sets["linux-6.12"] == "6.12"


@pytest.mark.unit
def test_probe_set_chosen_by_family() -> None:
    assert choose_probe_set("6.1.0-57-cloud-arm64", "6.1") == "linux-6.1"
    assert choose_probe_set("6.1.0-57-cloud-arm64", "6.1", "linux-6.1") == "linux-6.1"
    assert choose_probe_set("6.12.95+deb12-cloud-arm64", "6.12") == "linux-6.12"
    assert choose_probe_set("6.12.57+deb13-cloud-arm64", "6.12") == "linux-6.12"


@pytest.mark.unit
def test_a_kernel_without_a_probe_set_is_refused() -> None:
    with pytest.raises(KernelMismatch) as err:
        choose_probe_set("6.6.13+bpo-cloud-arm64", "6.6")
    text = str(err.value)
    assert "6.6.13+bpo-cloud-arm64" in text and "linux-6.1 (kernel 6.1)" in text
    assert "linux-6.12 (kernel 6.12)" in text
    assert "--probes" in text and err.value.exit_code == 2


@pytest.mark.unit
def test_an_explicit_probe_set_for_another_kernel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KernelMismatch, match=r"written for kernel 6\.1, the kernel to record is"):
        choose_probe_set("6.12.117", "6.12", "linux-6.1")
    other = tmp_path / "mine.toml"
    other.write_text('kernel = "6.12"\ndescription = "x"\nprobe = []\n')
    assert choose_probe_set("6.12.117", "6.12", str(other)) == str(other)
    with pytest.raises(ConfigError, match="unknown probe set 'linux-9'"):
        choose_probe_set("6.1.0", "6.1", "linux-9")


DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: trixie-security
Components: main
"""


@pytest.mark.unit
def test_host_mirrors_from_deb822_and_one_line_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACEKIT_DEBIAN_MIRROR", raising=False)
    m = host_mirrors("trixie", [("debian.sources", DEB822)])
    assert m.archive == "http://mirror.example/debian"
    assert m.security == "http://security.example/debian-security"
    one_line = "deb [arch=amd64] http://m.example/debian/ bookworm main\n# deb http://x y z\n"
    m = host_mirrors("bookworm", [("sources.list", one_line)])
    assert (m.archive, m.security) == ("http://m.example/debian", None)
    with pytest.raises(GuestBuildError, match="no Debian archive for bookworm"):
        host_mirrors("bookworm", [("debian.sources", DEB822)])
    monkeypatch.setenv("TRACEKIT_DEBIAN_MIRROR", "http://override.example/debian")
    assert host_mirrors("bookworm", []).archive == "http://override.example/debian"


@pytest.mark.unit
def test_host_codename() -> None:
    assert host_codename('NAME="Debian GNU/Linux"\nVERSION_CODENAME=trixie\n') == "trixie"
    assert host_codename("ID=debian\n") == ""


def fake_cache(root: Path, release: str, family: str) -> Path:
    """A guest cache whose manifest names a kernel of another family (files exist, empty)."""
    files = {}
    for name in ("Image", "initramfs.cpio.gz", "symbols.json", "layout.json", "config", "vmm"):
        (root / name).write_bytes(b"")
        files[name] = str(root / name)
    manifest = {
        "kernel_package": "linux-image-" + release,
        "kernel_version": release,
        "kernel_release": release,
        "kernel_family": family,
        "kernel_banner": f"Linux version {release} (test)",
        "image": files["Image"],
        "kernel_config": files["config"],
        "symbols": files["symbols.json"],
        "layout": files["layout.json"],
        "symbol_count": 0,
        "busybox_version": "0",
        "vmm": files["vmm"],
        "vmm_hash": "0",
        "initramfs": files["initramfs.cpio.gz"],
        "built_at": 0.0,
    }
    (root / "assets.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.unit
@pytest.mark.parametrize("probes", [None, "linux-6.1"])
def test_record_refuses_a_kernel_the_probe_set_is_not_for(
    tmp_path: Path, probes: str | None
) -> None:
    cache = fake_cache(tmp_path, "6.6.13+bpo-cloud-arm64", "6.6")
    extra = ("--probes", probes) if probes else ()
    out = run_tracekit(
        "record", *extra, "-o", str(tmp_path / "t.pftrace"),
        env={"TRACEKIT_CACHE": str(cache), "COLUMNS": "300"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "6.6.13+bpo-cloud-arm64" in out.stderr and "6.1" in out.stderr
    assert "--probes" in out.stderr
    assert not (tmp_path / "t.raw").exists(), "nothing may be recorded with the wrong probes"


@pytest.mark.unit
def test_a_cached_layout_follows_the_probe_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel cached before a probe set read a new member (the msi class's kvm_msi) has
    its layout re-read from its Image's BTF, once; CI found such a cache."""
    from tracekit.guest import kernel
    from tracekit.kernel import btf
    from tracekit.probes.spec import load_probe_set

    parsed: list[bytes] = []
    monkeypatch.setattr(btf, "find_btf_blob", lambda data, source="": data)
    monkeypatch.setattr(btf.Btf, "parse", staticmethod(lambda blob: parsed.append(blob) or blob))
    monkeypatch.setattr(
        btf, "extract_layout", lambda _btf, paths: {p: {"offset": 0, "size": 4} for p in paths}
    )
    (tmp_path / "Image").write_bytes(b"btf")
    (tmp_path / "layout.json").write_text(json.dumps({"vgic_irq.intid": {"offset": 0}}))
    meta = {
        "family": "6.1",
        "image": str(tmp_path / "Image"),
        "layout": str(tmp_path / "layout.json"),
    }
    (tmp_path / kernel.KERNEL_META).write_text(json.dumps(meta))

    kernel._cached_kernel(tmp_path)
    kernel._cached_kernel(tmp_path)

    layout = json.loads((tmp_path / "layout.json").read_text())
    assert set(layout) == set(load_probe_set("linux-6.1").btf_members())
    assert "kvm_msi.devid" in layout
    assert parsed == [b"btf"]  # the second read found the cache current
