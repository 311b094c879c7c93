//! One Redis connection type for a single server and for a Redis Cluster.
//!
//! `REDIS_URL` names one server (`redis://127.0.0.1:6379`) or, as a comma-separated list of
//! seed nodes (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`), a cluster; `REDIS_CLUSTER=1`
//! makes a single URL a cluster seed too. Both kinds reconnect by themselves; every user of
//! Redis (the cache, the global rate limiter, `/health`) goes through [`RedisConn`].

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::Secret;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The seed URLs of `url`, and whether they name a cluster.
pub fn parse(url: &str, cluster: bool) -> (Vec<String>, bool) {
    let nodes: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let is_cluster = cluster || nodes.len() > 1;
    (nodes, is_cluster)
}

impl RedisConn {
    /// Connects (with short timeouts, so an unreachable Redis is known at once).
    pub async fn connect(url: &Secret, cluster: bool) -> redis::RedisResult<Self> {
        let (nodes, is_cluster) = parse(url.expose(), cluster);
        let connect = async {
            if is_cluster {
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            } else {
                let client = redis::Client::open(url.expose())?;
                // Reconnect attempts stay frequent, so Redis is back soon after it is.
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500))
                    .set_number_of_retries(2);
                Ok(Self::Single(
                    ConnectionManager::new_with_config(client, cfg).await?,
                ))
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "Redis did not answer",
            ))),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_names_a_cluster() {
        assert_eq!(
            parse("redis://127.0.0.1:6379", false),
            (vec!["redis://127.0.0.1:6379".to_owned()], false)
        );
        assert_eq!(
            parse("redis://a:7000, redis://b:7000", false),
            (
                vec!["redis://a:7000".to_owned(), "redis://b:7000".to_owned()],
                true
            )
        );
        assert!(parse("redis://a:7000", true).1);
    }
}
