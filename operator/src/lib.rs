//! The Channel Contracts operator.
