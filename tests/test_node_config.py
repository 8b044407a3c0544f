"""node.toml: what NodeConfig.dump writes, NodeConfig.load reads back; bad node lists are refused;
the ports `dynstore up` gives its nodes."""
import os
import socket

import pytest

from dynstore.node.config import NodeAddress, NodeConfig
from dynstore.node.supervisor import cluster_configs


def _nodes():
    return tuple(NodeAddress(i, f"zone-{z}", ("127.0.0.1", 8000 + i), ("::1", 7000 + i), ("127.0.0.1", 7100 + i))
                 for i, z in ((1, "a"), (2, "b"), (3, "c")))


def test_dump_then_load_is_the_same_config(tmp_path):
    config = NodeConfig(2, str(tmp_path / 'da"ta\\dir'), _nodes(), "eu-west-1", "")
    path = tmp_path / "node.toml"
    path.write_text(config.dump())
    loaded = NodeConfig.load(str(path))
    assert loaded == config
    assert loaded.me.zone == "zone-b" and loaded.me.peer == ("::1", 7002)


def test_nodes_of_one_machine_link_over_named_unix_sockets(tmp_path):
    nodes = tuple(NodeAddress(n.id, n.zone, n.endpoint, f"\0run-{n.id}-peer", f"\0run-{n.id}-forward", processes=2)
                  for n in _nodes())
    config = NodeConfig(1, str(tmp_path / "node-1"), nodes)
    text = config.dump()
    assert 'peer = "@run-1-peer"' in text and 'forward = "@run-3-forward"' in text
    path = tmp_path / "node.toml"
    path.write_text(text)
    assert NodeConfig.load(str(path)) == config
    second = config.expanded()[1].me
    assert (second.peer, second.forward) == ("\0run-1-peer.1", "\0run-1-forward.1")
    path.write_text(text.replace('endpoint = "127.0.0.1:8001"', 'endpoint = "@web"'))
    with pytest.raises(ValueError, match="endpoint serves HTTP over TCP"):
        NodeConfig.load(str(path))


def test_node_id_must_be_one_of_the_nodes():
    with pytest.raises(ValueError, match="include node_id 4"):
        NodeConfig(4, "/x", _nodes())
    with pytest.raises(ValueError, match="distinct"):
        NodeConfig(1, "/x", _nodes() + _nodes()[:1])


def test_a_node_of_several_processes_lists_each_as_a_member(tmp_path):
    nodes = tuple(NodeAddress(n.id, n.zone, n.endpoint, n.peer, n.forward, processes=2) for n in _nodes())
    config = NodeConfig(2, str(tmp_path / "node-2"), nodes)
    processes = config.expanded()
    assert [p.node_id for p in processes] == [2, 1002]
    assert [p.data_dir for p in processes] == [str(tmp_path / "node-2" / f"node-{m}" / "data") for m in (2, 1002)]
    second = processes[1].me
    assert (second.zone, second.endpoint, second.peer, second.forward) == \
        ("zone-b", ("127.0.0.1", 8003), ("::1", 7003), ("127.0.0.1", 7103))
    assert sorted(m.id for m in processes[0].nodes) == [1, 2, 3, 1001, 1002, 1003]
    assert all(m.processes == 1 for m in processes[0].nodes)
    # Run as written: a process's own file lists single-process members, so it runs alone.
    path = tmp_path / "member.toml"
    path.write_text(processes[1].dump())
    assert NodeConfig.load(str(path)).expanded() == [processes[1]]


def test_processes_default_to_one_per_core(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('node_id = 1\ndata_dir = "/d"\n\n[[nodes]]\nid = 1\nzone = "z"\nendpoint = "127.0.0.1:8000"\n'
                    'peer = "127.0.0.1:7000"\nforward = "127.0.0.1:7100"\n')
    assert NodeConfig.load(str(path)).me.processes == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="below|from 1 to"):
        NodeConfig(1000, "/d", (NodeAddress(1000, "z", ("h", 1), ("h", 2), ("h", 3), processes=2),))


def _time_wait_on(port: int) -> None:
    """Leave a connection in TIME_WAIT on ``port`` at the server's end, as a node that closed its
    clients' connections on stop does."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the server closes first: its end waits out TIME_WAIT
            client.recv(1)


def test_nodes_get_their_ports_again_right_after_a_stop(tmp_path):
    base = next(p for p in range(20000, 30000, 3) if all(_bindable(p + i) for i in range(3)))
    for port in (base + 1, base + 2):
        _time_wait_on(port)
    configs = cluster_configs(3, "127.0.0.1", base, str(tmp_path), "us-east-1", None)
    assert [c.me.endpoint[1] for c in configs] == [base, base + 1, base + 2]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
