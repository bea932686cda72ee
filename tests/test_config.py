"""`MachineConfig` refuses every bad value with a `ConfigError` naming the field, when
it is made and in `validate()`, before any KVM resource is taken; and what it accepts
really builds a VM."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm import ExitKind, Machine, MachineConfig
from pyvmm.config import MAX_CPUS, MAX_MEMORY, MAX_TIMEOUT, MIN_MEMORY, parse_size
from pyvmm.device_config import DiskConfig, NetConfig
from pyvmm.errors import ConfigError

MiB = 1 << 20
FIELDS = [field.name for field in dataclasses.fields(MachineConfig)]


class FsPath(os.PathLike[str]):
    """A PathLike that is not a pathlib.Path, as a user's own class may be."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"FsPath({self.path!r})"


class BytesPath(os.PathLike[bytes]):
    def __fspath__(self) -> bytes:
        return b"/boot/vmlinuz"


class NumberPath(os.PathLike[str]):
    def __fspath__(self) -> str:
        return 5  # type: ignore[return-value]  # a broken PathLike: os.fspath raises TypeError


def refused(field: str, **options: object) -> str:
    """Make a config with `options`; it must be refused for `field`. The message."""
    options.setdefault("kernel", "vmlinuz")
    with pytest.raises(ConfigError) as caught:
        MachineConfig(**options)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"MachineConfig.{field}: "), message
    return message


# --- issue 11, item 5: each value the issue names -----------------------------------------


@pytest.mark.parametrize(
    "kernel", [None, b"/boot/vmlinuz", 42, "", "vm\0linuz", BytesPath(), NumberPath(), "\ud800"]
)
def test_bad_kernel(kernel: object) -> None:
    refused("kernel", kernel=kernel)


@pytest.mark.parametrize("initrd", [b"initrd.img", 0, "", "init\0rd", FsPath("a\0b")])
def test_bad_initrd(initrd: object) -> None:
    refused("initrd", initrd=initrd)


@pytest.mark.parametrize("memory", [None, 268435456.0, True, -4096, 4095, "lots", 1 << 47, "99999999T"])
def test_bad_memory(memory: object) -> None:
    refused("memory", memory=memory)


@pytest.mark.parametrize("cpus", [True, False, 0, -1, MAX_CPUS + 1, 2.0, "2", None])
def test_bad_cpus(cpus: object) -> None:
    refused("cpus", cpus=cpus)


HUGE = pytest.param(10**400, id="1e400")


@pytest.mark.parametrize(
    "timeout", ["5", True, math.nan, math.inf, -math.inf, 0, -1, 1e309, MAX_TIMEOUT + 1, 1e15, HUGE]
)
def test_bad_timeout(timeout: object) -> None:
    message = refused("timeout", timeout=timeout)
    assert "positive finite number of seconds" in message


def test_the_timeout_message_names_the_value() -> None:
    message = refused("timeout", timeout=math.nan)
    assert message == "MachineConfig.timeout: expected a positive finite number of seconds, got nan"


def test_the_longest_timeout_is_one_threading_can_wait_for() -> None:
    timeout = MachineConfig(kernel="vmlinuz", timeout=MAX_TIMEOUT).timeout
    assert timeout is not None
    # A free lock is taken at once, but a timeout past TIMEOUT_MAX raises OverflowError first.
    assert threading.Lock().acquire(timeout=timeout)


@pytest.mark.parametrize("cmdline", [None, 7, ["quiet"], "a\0b", b"a\0b", "\ud800", bytearray(b"quiet")])
def test_bad_cmdline(cmdline: object) -> None:
    refused("cmdline", cmdline=cmdline)


def test_a_bytes_cmdline_is_taken_as_given() -> None:
    assert MachineConfig(kernel="vmlinuz", cmdline=b"root=/dev/vda \xff").cmdline == b"root=/dev/vda \xff"


@pytest.mark.parametrize("console", [b"", 1, "print"])
def test_bad_console(console: object) -> None:
    refused("console", console=console)


@pytest.mark.parametrize("device", [None, "", "/dev/\0kvm", b"/dev/kvm"])
def test_bad_kvm_device(device: object) -> None:
    refused("kvm_device", kvm_device=device)


@pytest.mark.parametrize("field", ["kernel_decompress", "kernel_format"])
@pytest.mark.parametrize("value", [None, "", "HOST", "Auto", 1])
def test_bad_choices(field: str, value: object) -> None:
    refused(field, **{field: value})


def test_good_values_are_kept_as_given() -> None:
    def console(data: bytes) -> None:
        pass

    config = MachineConfig(
        kernel=FsPath("/boot/vmlinuz"),
        initrd=Path("initrd.img"),
        cmdline="root=/dev/vda \udcff",  # a non-UTF-8 byte from the command line (PEP 383)
        cpus=MAX_CPUS,
        memory="1G",
        console=console,
        timeout=1,
        kvm_device=Path("/dev/kvm"),
        kernel_decompress="guest",
        kernel_format="flat",
    )
    assert config.memory == "1G" and config.memory_bytes() == 1 << 30
    assert config.timeout == 1 and config.cpus == MAX_CPUS
    assert MachineConfig(kernel="\udcff.elf", memory=MIN_MEMORY).memory_bytes() == MIN_MEMORY


def test_validate_sees_attributes_changed_after_construction() -> None:
    config = MachineConfig(kernel="vmlinuz")
    config.validate()
    config.timeout = math.nan
    with pytest.raises(ConfigError, match=r"^MachineConfig\.timeout: "):
        config.validate()


def _kvm_fds() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith(("/dev/kvm", "anon_inode:kvm"))
        except OSError:
            pass
    return count


@pytest.mark.parametrize(("field", "value"), [("cpus", True), ("memory", 268435456.0), ("kernel", None)])
def test_machine_refuses_a_changed_config_before_taking_kvm(field: str, value: object) -> None:
    config = MachineConfig(kernel="vmlinuz")
    setattr(config, field, value)
    before = _kvm_fds()
    with pytest.raises(ConfigError, match=rf"^MachineConfig\.{field}: "):
        Machine(config).run()
    assert _kvm_fds() == before


# --- parse_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256", 256 * MiB),
        ("256M", 256 * MiB),
        ("1G", 1 << 30),
        ("2 GiB", 2 << 30),
        ("4096B", 4096),
        ("64T", 1 << 46),
        ("0000000000000000000000000001G", 1 << 30),  # leading zeros are no absurd size
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "65T",
        "99999999T",
        "9" * 25,
        pytest.param("9" * 5000, id="5000 nines"),
        pytest.param("1" + "0" * 100000 + "B", id="1e100000B"),
    ],
)
def test_parse_size_refuses_absurd_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="more than pyvmm gives a guest") as caught:
        parse_size(text)
    assert len(str(caught.value)) < 200  # the message quotes the text, shortened


@pytest.mark.parametrize("text", ["\u0662\u0665\u0666M", "\uff12\uff15\uff16", "1.5G", "-1G", "", "1Q"])
def test_parse_size_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read memory size"):
        parse_size(text)


# --- property: any value of any field ------------------------------------------------------
#
# Each strategy draws (value, verdict) for one field: True when the value is valid, False
# when it is not, None when the test does not decide (arbitrary text as a memory size).
# MachineConfig checks the fields in their order, so the outcome must be: a config when
# no field is invalid, else a ConfigError naming a field not known to be valid, with every
# field before it not known to be invalid.

Verdict = bool | None
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.text(st.characters(exclude_categories=()), max_size=8),
    st.binary(max_size=8),
    st.builds(FsPath, st.text(max_size=4)),
    st.just(BytesPath()),
    st.lists(st.integers(), max_size=2),
    st.just(print),
    st.just(object()),
)
# The values each check exists for: tried in every field, and drawn often.
EDGE_VALUES: list[object] = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    5e-324,
    1e309,
    268435456.0,
    True,
    False,
    0,
    -1,
    MAX_TIMEOUT,
    MAX_TIMEOUT + 1,
    MAX_CPUS + 1,
    MAX_MEMORY + 4096,
    10**400,
    "",
    "a\0b",
    "\ud800",
    "\udcff",
    b"quiet",
    bytearray(b"x"),
    FsPath(""),
    FsPath("a\0b"),
]
EDGES = st.sampled_from(EDGE_VALUES)


def _fs_encodable(name: str) -> bool:
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        return False
    return True


def _path_verdict(value: object) -> Verdict:
    if not isinstance(value, (str, os.PathLike)):
        return False
    name = os.fspath(value)
    return isinstance(name, str) and name != "" and "\0" not in name and _fs_encodable(name)


def _cmdline_verdict(value: object) -> Verdict:
    if isinstance(value, bytes):
        return b"\0" not in value
    return isinstance(value, str) and "\0" not in value and _fs_encodable(value)


def _is_int(value: object) -> bool:
    return type(value) is int


def _cpus_verdict(value: object) -> Verdict:
    return _is_int(value) and 1 <= value <= MAX_CPUS  # type: ignore[operator]


def _memory_verdict(value: object) -> Verdict:
    if isinstance(value, str):
        return None
    return _is_int(value) and MIN_MEMORY <= value <= MAX_MEMORY and value % 4096 == 0  # type: ignore[operator]


def _timeout_verdict(value: object) -> Verdict:
    if value is None:
        return True
    if type(value) is float:
        return math.isfinite(value) and 0 < value <= MAX_TIMEOUT
    return type(value) is int and 0 < value <= MAX_TIMEOUT  # type: ignore[operator]


def _judged(values: st.SearchStrategy[object], verdict: Callable[[object], Verdict]) -> st.SearchStrategy:
    return st.one_of(values, EDGES, ANY).map(lambda value: (value, verdict(value)))


_text = st.text(st.characters(exclude_categories=()), max_size=12)
_paths = st.one_of(_text, _text.map(FsPath), st.text(min_size=1, max_size=12).map(Path))
_size_units = st.sampled_from(["", "B", "K", "M", "G", "T", "KiB", "MB", "g"])


@st.composite
def _memory_texts(draw: st.DrawFn) -> tuple[str, Verdict]:
    """A size text whose value the test knows."""
    number = draw(st.integers(min_value=0, max_value=1 << 50))
    unit = draw(_size_units)
    scale = {"": MiB, "B": 1, "K": 1 << 10, "M": MiB, "G": 1 << 30, "T": 1 << 40}[unit[:1].upper()]
    size = number * scale
    return f"{number}{unit}", MIN_MEMORY <= size <= MAX_MEMORY and size % 4096 == 0


def _choice_verdict(valid: tuple[str, ...]) -> Callable[[object], Verdict]:
    return lambda value: isinstance(value, str) and value in valid


VERDICTS: dict[str, Callable[[object], Verdict]] = {
    "kernel": _path_verdict,
    "initrd": lambda value: value is None or _path_verdict(value),
    "cmdline": _cmdline_verdict,
    "cpus": _cpus_verdict,
    "memory": _memory_verdict,
    "console": lambda value: value is None or callable(value),
    "timeout": _timeout_verdict,
    "kvm_device": _path_verdict,
    "kernel_decompress": _choice_verdict(("host", "guest")),
    "kernel_format": _choice_verdict(("auto", "flat")),
    "disks": lambda value: isinstance(value, (tuple, list))
    and len(value) <= 16
    and all(isinstance(disk, DiskConfig) for disk in value),
    "nets": lambda value: isinstance(value, (tuple, list))
    and len(value) <= 8
    and all(isinstance(net, NetConfig) for net in value),
    "rng": lambda value: isinstance(value, bool),
    "console_device": _choice_verdict(("serial", "virtio")),
    "transport": _choice_verdict(("pci", "mmio")),
    "test_devices": lambda value: isinstance(value, (tuple, list))
    and all(isinstance(name, str) and name in ("pci-testdev", "pc-testdev") for name in value)
    and len(set(value)) == len(value),
}
# Values near each field's valid ones; _judged adds the edge values and anything at all.
NEAR = {
    "kernel": _paths,
    "initrd": st.one_of(st.none(), _paths),
    "cmdline": st.one_of(_text, st.binary(max_size=8)),
    "cpus": st.integers(min_value=-2, max_value=MAX_CPUS + 2),
    "memory": st.one_of(
        st.integers(min_value=0, max_value=1 << 47),
        st.integers(min_value=0, max_value=(1 << 34) + 1).map(lambda pages: pages * 4096),
    ),
    "console": st.sampled_from([None, print, len]),
    "timeout": st.one_of(st.none(), st.floats(), st.integers(min_value=-1, max_value=10**12)),
    "kvm_device": _paths,
    "kernel_decompress": st.sampled_from(["host", "guest", "Host", "", "host "]),
    "kernel_format": st.sampled_from(["auto", "flat", "elf", "", "Flat"]),
    "disks": st.lists(
        st.sampled_from([DiskConfig("a.img"), DiskConfig("b", readonly=True), "a.img"]), max_size=18
    ),
    "nets": st.lists(st.sampled_from([NetConfig(), NetConfig("tap0"), "tap0"]), max_size=10),
    "rng": st.sampled_from([True, False, 1, 0, None, "on"]),
    "console_device": st.sampled_from(["serial", "virtio", "hvc0", ""]),
    "transport": st.sampled_from(["pci", "mmio", "PCI", "ccw"]),
    "test_devices": st.lists(st.sampled_from(["pci-testdev", "pc-testdev", "edu"]), max_size=3),
}
FIELD_STRATEGIES = {name: _judged(NEAR[name], VERDICTS[name]) for name in NEAR}
FIELD_STRATEGIES["memory"] = st.one_of(FIELD_STRATEGIES["memory"], _memory_texts())


def test_every_field_is_drawn() -> None:
    assert sorted(FIELD_STRATEGIES) == sorted(VERDICTS) == sorted(FIELDS)


EXAMPLES = int(os.environ.get("PYVMM_CONFIG_EXAMPLES", "300"))  # more: PYVMM_CONFIG_EXAMPLES=100000
VALID = {"kernel": "vmlinuz"}  # with the defaults, a valid config


def assert_kept_as_given(config: MachineConfig, options: dict[str, object]) -> None:
    for name, value in options.items():
        assert getattr(config, name) is value, name  # nothing rewritten


def outcome_for(name: str, value: object, verdict: Verdict) -> str | None:
    """What is wrong when field `name` alone is `value` (None: nothing)."""
    options = {**VALID, name: value}
    try:
        config = MachineConfig(**options)  # type: ignore[arg-type]
    except ConfigError as exc:
        if not str(exc).startswith(f"MachineConfig.{name}: "):
            return f"{name}={value!r}: the error names another field: {exc}"
        return f"{name}={value!r} refused: {exc}" if verdict is True else None
    if verdict is False:
        return f"{name}={value!r} accepted"
    if any(getattr(config, field) is not given for field, given in options.items()):
        return f"{name}={value!r} rewritten"
    return None


def test_every_edge_value_in_every_field() -> None:
    wrong = [
        problem
        for name in FIELDS
        for value in EDGE_VALUES
        if (problem := outcome_for(name, value, VERDICTS[name](value))) is not None
    ]
    assert not wrong, "\n".join(wrong)


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.sampled_from(FIELDS).flatmap(lambda name: st.tuples(st.just(name), FIELD_STRATEGIES[name])))
def test_any_value_of_one_field_gives_a_config_or_a_config_error_naming_it(
    drawn: tuple[str, tuple[object, Verdict]],
) -> None:
    name, (value, verdict) = drawn
    problem = outcome_for(name, value, verdict)
    assert problem is None, problem


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.fixed_dictionaries(FIELD_STRATEGIES))
def test_any_values_give_a_config_or_a_config_error_naming_a_field(
    drawn: dict[str, tuple[object, Verdict]],
) -> None:
    options = {name: value for name, (value, _) in drawn.items()}
    verdicts = [drawn[name][1] for name in FIELDS]
    try:
        config = MachineConfig(**options)  # type: ignore[arg-type]
    except ConfigError as exc:
        named = str(exc).split(":", 1)[0].removeprefix("MachineConfig.")
        assert named in FIELDS, str(exc)
        position = FIELDS.index(named)
        assert verdicts[position] is not True, f"{named}={options[named]!r} refused: {exc}"
        assert False not in verdicts[:position], f"{exc}, yet an earlier field is invalid: {options}"
        return
    assert False not in verdicts, f"accepted an invalid config: {options}"
    assert_kept_as_given(config, options)
    config.validate()


# --- valid configs really build ----------------------------------------------------------


@pytest.mark.kvm
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    as_path=st.sampled_from([str, Path, FsPath]),
    cpus=st.integers(min_value=1, max_value=2),
    memory=st.one_of(st.sampled_from(["16M", "64M", "128 MiB"]), st.integers(4, 64).map(lambda n: n * MiB)),
    timeout=st.one_of(st.integers(min_value=30, max_value=120), st.floats(min_value=30.0, max_value=120.0)),
    console=st.booleans(),
)
def test_valid_configs_boot_the_demo_guest(
    guests: Path,
    as_path: Callable[[str], str | os.PathLike[str]],
    cpus: int,
    memory: int | str,
    timeout: float,
    console: bool,
) -> None:
    streamed: list[bytes] = []
    config = MachineConfig(
        kernel=as_path(str(guests / "hello.elf")),
        cpus=cpus,
        memory=memory,
        timeout=timeout,
        console=streamed.append if console else None,
        kvm_device=as_path("/dev/kvm"),
    )
    result = Machine(config).run()
    assert "Hello from the pyvmm demo guest!" in result.console_text
    assert result.exit.kind is ExitKind.POWEROFF, result.exit.describe()
    assert b"".join(streamed) == (result.console if console else b"")


@pytest.mark.kvm
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    code=st.integers(min_value=0, max_value=100),
    word=st.binary(min_size=1, max_size=12).filter(lambda word: min(word) > 0x20),  # no blank, no NUL
    as_bytes=st.booleans(),
)
def test_a_valid_cmdline_reaches_the_guest_as_its_bytes(
    guests: Path, code: int, word: bytes, as_bytes: bool
) -> None:
    """bytes as given, and a str as the bytes it stands for (os.fsdecode, as argv is)."""
    cmdline = b"exit=%d " % code + word
    kernel = guests / "mbinfo.elf"
    config = MachineConfig(kernel=kernel, cmdline=cmdline if as_bytes else os.fsdecode(cmdline), timeout=60)
    result = Machine(config).run()
    assert b"cmdline=" + os.fsencode(kernel) + b" " + cmdline + b"\n" in result.console.replace(b"\r", b"")
    assert result.exit.kind is ExitKind.DEBUG_EXIT and result.exit.code == code, result.exit.describe()
