"""Scripted spoken conversations for the demo model: a user asks, the model answers."""

from duplex.demo.data.conversations.config import ConversationConfig
from duplex.demo.data.conversations.dataset import script_digest, write_conversations
from duplex.demo.data.conversations.generator import Conversation, ConversationGenerator
from duplex.demo.data.conversations.script import SCRIPT, Exchange, words

__all__ = [
    "SCRIPT",
    "Conversation",
    "ConversationConfig",
    "ConversationGenerator",
    "Exchange",
    "script_digest",
    "words",
    "write_conversations",
]
