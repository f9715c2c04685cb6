//! The DQE enforcer node on tokio (being written).
