//! The Channel Contracts admission webhook.
