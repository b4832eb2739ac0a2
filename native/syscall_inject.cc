// syscall injection into a stopped tracee (ptrace); filled in with the dirty tracker.
