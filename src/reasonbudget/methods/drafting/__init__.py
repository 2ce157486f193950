from reasonbudget.methods.drafting.arbitrage import Arbitrage, ArbitrageConfig
from reasonbudget.methods.drafting.mtad import MTAD, MTADConfig
from reasonbudget.methods.drafting.rsd import RSD, RSDConfig
from reasonbudget.methods.drafting.speculative import SpeculativeConfig, SpeculativeDecoding

__all__ = ["MTAD", "RSD", "Arbitrage", "ArbitrageConfig", "MTADConfig", "RSDConfig", "SpeculativeConfig",
           "SpeculativeDecoding"]
