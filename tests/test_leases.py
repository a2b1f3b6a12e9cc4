"""Lease owners: which leases a restarted bridge may end at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from bridge.leases import dead_owners, new_owner


def test_owner_names_host_and_pid():
    """An owner is host:pid:token, unique per call."""
    host, pid, token = new_owner().rsplit(":", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid() and new_owner() != new_owner()


def test_dead_local_process_is_dead_other_hosts_are_not_judged():
    """A finished process on this host is dead; this process and other hosts are not."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    gone = f"{socket.gethostname()}:{finished.stdout.strip()}:abc"
    me = new_owner()
    alive = f"{socket.gethostname()}:{os.getppid()}:abc"
    elsewhere = "other-host:1:abc"
    assert dead_owners([gone, me, alive, elsewhere], me) == [gone]


def test_an_earlier_life_of_this_pid_is_dead():
    """Another token with this process's pid is an earlier life of it (pid 1 in a container)."""
    me = new_owner()
    earlier = me.rsplit(":", 1)[0] + ":000000"
    assert dead_owners([earlier], me) == [earlier]
