"""backtrader strategies: the agent's triple-barrier strategy and baselines, all logging their trades."""

from strategies.agent import TransformerAgentStrategy
from strategies.broker import BarrierBroker, CashBackBroker, TripleBarrierOrder
from strategies.base import EXIT_REASONS, TRADE_FIELDS, TradeLogStrategy
from strategies.baselines import STRATEGIES, BuyAndHold, SmaCross, get_strategy
from strategies.portfolio import PORTFOLIO_TRADE_FIELDS, PortfolioAgentStrategy

__all__ = [
    "EXIT_REASONS",
    "PORTFOLIO_TRADE_FIELDS",
    "PortfolioAgentStrategy",
    "STRATEGIES",
    "TRADE_FIELDS",
    "BarrierBroker",
    "BuyAndHold",
    "CashBackBroker",
    "SmaCross",
    "TradeLogStrategy",
    "TransformerAgentStrategy",
    "TripleBarrierOrder",
    "get_strategy",
]
