from reasonbudget.methods.drafting.speculative import SpeculativeConfig, SpeculativeDecoding

__all__ = ["SpeculativeConfig", "SpeculativeDecoding"]
