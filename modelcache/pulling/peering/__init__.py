"""Pulling from peers of the same node group: the chunk board a node serves, and the swarm a
pulling node fetches from (peers first, the origin for what no peer has)."""

from modelcache.pulling.peering.board import BoardFile, ChunkBoard, board_for_published
from modelcache.pulling.peering.swarm import PeerGroup

__all__ = ["BoardFile", "ChunkBoard", "PeerGroup", "board_for_published"]
