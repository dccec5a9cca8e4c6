"""The gateway's processes: the supervisor, its workers, the channel and the memory they share, and the
listeners."""
