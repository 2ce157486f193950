from reasonbudget.methods.drafting.mtad import MTAD, MTADConfig
from reasonbudget.methods.drafting.speculative import SpeculativeConfig, SpeculativeDecoding

__all__ = ["MTAD", "MTADConfig", "SpeculativeConfig", "SpeculativeDecoding"]
