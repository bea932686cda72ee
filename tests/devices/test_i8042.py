"""The 8042 keyboard controller as Linux's i8042 driver, atkbd and reboot code use it."""

from __future__ import annotations

import threading

from devices.i8042_harness import Controller
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices.i8042 import Command, Config, OutputPort, Status
from pyvmm.devices.ps2_keyboard import KeyboardCommand
from pyvmm.outcome import ExitKind

ACK = 0xFA


def test_reset_state() -> None:
    c = Controller()
    assert c.status() == Status.UNLOCKED | Status.SYS
    assert c.config() == Config.KBD_INT | Config.SYS | Config.AUX_DISABLE | Config.TRANSLATE
    assert c.drain() == []


def test_linux_controller_probe() -> None:
    c = Controller()
    assert c.drain() == []  # i8042_controller_check: nothing to flush
    c.command(Command.SELF_TEST)
    status = c.status()
    assert status & Status.OBF and status & Status.CMD and not status & Status.IBF
    assert c.read() == 0x55
    # i8042_controller_init reads the CTR until two reads agree, then writes it back.
    first, second = c.config(), c.config()
    assert first == second
    ctr = (first | Config.KBD_DISABLE) & ~int(Config.KBD_INT)
    c.set_config(ctr)
    assert not c.status() & Status.CMD  # the last write went to the data port
    assert c.config() == ctr
    assert c.query(Command.TEST_KBD) == [0x00]


def test_linux_aux_probe() -> None:
    c = Controller()
    # The loopback test: the byte comes back marked as auxiliary data.
    c.command(Command.WRITE_AUX_BUFFER, 0x5A)
    assert c.status() & (Status.OBF | Status.AUX_DATA) == Status.OBF | Status.AUX_DATA
    assert c.read() == 0x5A
    assert not c.status() & Status.AUX_DATA
    assert c.query(Command.TEST_AUX) == [0x00]
    c.command(Command.DISABLE_AUX)
    assert c.config() & Config.AUX_DISABLE
    c.command(Command.ENABLE_AUX)
    assert not c.config() & Config.AUX_DISABLE
    # The IRQ delivery test: AUX_INT on, loop 0xa5 back, expect IRQ 12 and not IRQ 1.
    c.set_config(c.config() | Config.AUX_INT)
    c.command(Command.WRITE_AUX_BUFFER, 0xA5)
    assert c.aux_line.high and not c.kbd_line.high
    assert c.read() == 0xA5
    assert not c.aux_line.high


def test_mux_probe_finds_no_multiplexer() -> None:
    # i8042_set_mux_mode: a plain loopback echoes 0xf0, 0x56, 0xa4, so no active MUX.
    c = Controller()
    for byte in (0xF0, 0x56, 0xA4):
        assert c.query(Command.WRITE_AUX_BUFFER, byte) == [byte]


def test_keyboard_interface_enable_and_disable() -> None:
    c = Controller()
    c.command(Command.DISABLE_KBD)
    assert c.config() & Config.KBD_DISABLE
    c.send(KeyboardCommand.ECHO)
    assert c.drain() == []  # the keyboard's reply waits for its clock line
    c.command(Command.ENABLE_KBD)
    assert c.drain() == [0xEE]
    assert not c.config() & Config.KBD_DISABLE


def test_controller_ram() -> None:
    c = Controller()
    c.command(Command.WRITE_RAM + 5, 0x42)
    assert c.query(Command.READ_RAM + 5) == [0x42]
    assert c.query(Command.READ_RAM + 31) == [0x00]


def test_keyboard_identify_untranslated_and_translated() -> None:
    c = Controller()
    c.set_config(Config.KBD_INT)
    c.send(KeyboardCommand.IDENTIFY)
    assert c.drain() == [ACK, 0xAB, 0x83]
    c.set_config(Config.KBD_INT | Config.TRANSLATE)
    c.send(KeyboardCommand.IDENTIFY)
    assert c.drain() == [ACK, 0xAB, 0x41]  # the controller translates 0x83 like the F7 key


def test_keyboard_scan_code_set() -> None:
    c = Controller()
    c.set_config(Config.KBD_INT)
    for byte in (KeyboardCommand.SCAN_CODE_SET, 0):
        c.send(byte)
    assert c.drain() == [ACK, ACK, 2]  # the command and its argument are each acknowledged
    for byte in (KeyboardCommand.SCAN_CODE_SET, 3, KeyboardCommand.SCAN_CODE_SET, 0):
        c.send(byte)
    assert c.drain() == [ACK, ACK, ACK, ACK, 3]
    c.set_config(Config.KBD_INT | Config.TRANSLATE)
    for byte in (KeyboardCommand.SCAN_CODE_SET, 0):
        c.send(byte)
    assert c.drain() == [ACK, ACK, 0x3F]  # set 3 as seen through translation
    for byte in (KeyboardCommand.SCAN_CODE_SET, 9):
        c.send(byte)
    assert c.drain() == [ACK, 0xFE]


def test_each_byte_is_a_new_interrupt_edge() -> None:
    c = Controller()
    c.send(KeyboardCommand.IDENTIFY)
    assert c.kbd_line.levels == [True]
    assert c.read() == ACK
    assert c.kbd_line.levels == [True, False, True]
    assert c.read() == 0xAB
    assert c.read() == 0x41
    assert c.kbd_line.levels == [True, False, True, False, True, False]
    assert not c.aux_line.levels


def test_interrupts_follow_the_configuration_byte() -> None:
    c = Controller()
    c.set_config(Config.SYS)
    c.send(KeyboardCommand.ECHO)
    assert c.status() & Status.OBF
    assert not c.kbd_line.levels
    c.set_config(Config.SYS | Config.KBD_INT)  # a byte still waiting raises the line
    assert c.kbd_line.high
    assert c.read() == 0xEE
    assert not c.kbd_line.high


def test_controller_replies_raise_irq1_when_enabled() -> None:
    c = Controller()
    c.command(Command.SELF_TEST)
    assert c.kbd_line.high
    assert c.read() == 0x55


def test_empty_output_buffer_reads_the_last_byte_again() -> None:
    c = Controller()
    assert c.read() == 0
    c.command(Command.SELF_TEST)
    assert c.read() == 0x55
    assert c.read() == 0x55


def test_write_to_kbd_buffer() -> None:
    c = Controller()
    c.command(Command.WRITE_KBD_BUFFER, 0x1E)
    assert c.status() & (Status.OBF | Status.AUX_DATA) == Status.OBF
    assert c.kbd_line.high
    assert c.read() == 0x1E


def test_aux_device_commands_get_the_no_mouse_answer() -> None:
    c = Controller()
    c.set_config(Config.KBD_INT | Config.AUX_INT | Config.SYS)
    c.command(Command.WRITE_AUX, 0xF2)  # psmouse's GETID
    status = c.status()
    assert status & (Status.OBF | Status.AUX_DATA | Status.TIMEOUT) == (
        Status.OBF | Status.AUX_DATA | Status.TIMEOUT
    )
    assert c.aux_line.high and not c.kbd_line.levels
    assert c.read() == 0xFE
    assert not c.status() & Status.TIMEOUT
    assert not c.aux_line.high


def test_reset_command_reboots() -> None:
    c = Controller()
    c.command(Command.RESET)
    [outcome] = c.stop.outcomes
    assert outcome.kind is ExitKind.REBOOT
    assert outcome.detail == "reset through the i8042"


def test_pulse_commands_reset_only_when_bit0_is_pulsed() -> None:
    c = Controller()
    c.command(0xFF)  # pulse nothing
    c.command(0xFD)  # pulse bit 1 only
    assert c.stop.outcomes == []
    c.command(0xF0)  # all four bits, the reset line among them
    assert [o.kind for o in c.stop.outcomes] == [ExitKind.REBOOT]


def test_output_port() -> None:
    c = Controller()
    assert c.query(Command.READ_OUTPUT_PORT) == [OutputPort.RESET | OutputPort.A20]
    c.command(Command.WRITE_OUTPUT_PORT, 0xDD)  # A20 off, as old real-mode code does
    assert c.stop.outcomes == []
    assert c.query(Command.READ_OUTPUT_PORT) == [0xCD]
    c.command(Command.WRITE_OUTPUT_PORT, 0xFE)  # reset line low
    assert [o.kind for o in c.stop.outcomes] == [ExitKind.REBOOT]


def test_linux_reboot_loop() -> None:
    # arch/x86 BOOT_KBD: wait for IBF clear, then write 0xfe to 0x64, ten times.
    c = Controller()
    for _ in range(10):
        assert not c.status() & Status.IBF
        c.command(Command.RESET)
    assert {o.kind for o in c.stop.outcomes} == {ExitKind.REBOOT}


def test_a_new_command_cancels_one_waiting_for_data() -> None:
    c = Controller()
    c.command_port.write(0, 1, Command.WRITE_RAM)
    c.command(Command.SELF_TEST)
    assert c.drain() == [0x55]
    c.send(KeyboardCommand.ECHO)  # goes to the keyboard, not into the configuration byte
    assert c.drain() == [0xEE]
    assert c.config() & Config.SYS


def test_wide_reads_fill_with_ones() -> None:
    c = Controller()
    assert c.command_port.read(0, 2) == 0xFF00 | Status.UNLOCKED | Status.SYS


def test_output_queues_are_bounded() -> None:
    c = Controller()
    for _ in range(1000):
        c.command(Command.SELF_TEST)
        c.send(KeyboardCommand.ECHO)
    assert len(c.drain()) <= 34


def test_concurrent_accesses_keep_replies_whole() -> None:
    c = Controller()
    c.set_config(Config.SYS)  # no interrupts, no translation

    def hammer() -> None:
        for _ in range(200):
            c.status()
            c.command(Command.READ_RAM + 1)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(c.drain()) <= {0}


# (port, is_write, value): port 0 is the data port, 1 the command port.
accesses = st.lists(st.tuples(st.integers(0, 1), st.booleans(), st.integers(0, 0xFF)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(accesses)
def test_no_access_sequence_raises(ops: list[tuple[int, bool, int]]) -> None:
    c = Controller()
    for port, is_write, value in ops:
        target = c.command_port if port else c.data
        if is_write:
            target.write(0, 1, value)
        else:
            assert 0 <= target.read(0, 1) <= 0xFF
    # The lines never report a level twice in a row.
    for line in (c.kbd_line, c.aux_line):
        assert all(a != b for a, b in zip(line.levels, line.levels[1:], strict=False))
