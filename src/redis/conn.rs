//! Connections to Redis.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection that reconnects by itself. It connects lazily, so a node
/// starts while Redis is down; commands fail fast while it is down (one
/// reconnect attempt per command, then an error), and the callers decide
/// what to retry. `response_timeout` must exceed the longest blocking
/// command sent on it.
pub fn connect(url: &str, response_timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout));
    ConnectionManager::new_lazy_with_config(client, config)
}
