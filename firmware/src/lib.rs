//! The DQE enforcer firmware (being written).
