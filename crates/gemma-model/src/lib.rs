//! gemma-model
