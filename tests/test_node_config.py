"""node.toml: what NodeConfig.dump writes, NodeConfig.load reads back; bad node lists are refused."""
import pytest

from dynstore.node.config import NodeAddress, NodeConfig


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


def test_node_id_must_be_one_of_the_nodes():
    with pytest.raises(ValueError, match="include node_id 4"):
        NodeConfig(4, "/x", _nodes())
    with pytest.raises(ValueError, match="distinct"):
        NodeConfig(1, "/x", _nodes() + _nodes()[:1])
