"""The I/O thread and its event sources: the per-VM `IoThread` (`thread.py`), `EventFd`
(`eventfd.py`) and `IoEventNotifier` / `QueueDoorbells` (`ioevent.py`: a doorbell
through KVM_IOEVENTFD, or the exit handler where KVM lacks it)."""
