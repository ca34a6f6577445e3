//! The etcd backend: one lease per instance, member and owner keys on it,
//! checkpoints written in a transaction fenced by the owner key.

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::Mutex;

use super::config::{ClusterConfig, EtcdConfig};
use super::engine::{Engine, EngineError, Fence, Instance, View};

pub struct EtcdEngine {
    cfg: EtcdConfig,
    instance: Instance,
    /// `<prefix>/<cluster name>/`
    base: String,
    client: Mutex<Option<Client>>,
    lease: Mutex<Option<i64>>,
}

impl EtcdEngine {
    pub async fn connect(cfg: &ClusterConfig) -> anyhow::Result<Self> {
        let etcd = cfg
            .etcd
            .clone()
            .ok_or_else(|| anyhow::anyhow!("cluster.etcd: missing"))?;
        let base = format!("{}/{}/", etcd.prefix.trim_end_matches('/'), cfg.name);
        Ok(EtcdEngine {
            cfg: etcd,
            instance: Instance::of(cfg),
            base,
            client: Mutex::new(None),
            lease: Mutex::new(None),
        })
    }

    fn member_key(&self) -> String {
        format!("{}members/{}", self.base, self.instance.id)
    }
    fn owner_key(&self, source: &str) -> String {
        format!("{}owners/{source}", self.base)
    }
    fn checkpoint_key(&self, source: &str) -> String {
        format!("{}checkpoints/{source}", self.base)
    }

    fn options(&self) -> Result<ConnectOptions, EngineError> {
        let timeout = self.instance.request_timeout();
        let mut o = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(timeout, timeout);
        if let Some(user) = &self.cfg.username {
            let password = self
                .cfg
                .password()
                .map_err(EngineError::Unreachable)?
                .ok_or_else(|| {
                    EngineError::Unreachable("cluster.etcd.password_file unset".into())
                })?;
            o = o.with_user(user.clone(), password.expose().to_string());
        }
        if let Some(tls) = &self.cfg.tls {
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).map_err(|e| {
                    EngineError::Unreachable(format!("cannot read {}: {e}", p.display()))
                })
            };
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                t = t.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
                t = t.identity(Identity::from_pem(read(c)?, read(k)?));
            }
            o = o.with_tls(t);
        }
        Ok(o)
    }

    /// The client, connecting first when there is none (or the last failed).
    async fn client(&self) -> Result<Client, EngineError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connecting = Client::connect(&self.cfg.endpoints, Some(self.options()?));
        let client = tokio::time::timeout(self.instance.request_timeout(), connecting)
            .await
            .map_err(|_| EngineError::Unreachable("connect timed out".into()))?
            .map_err(|e| EngineError::Unreachable(e.to_string()))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs one request within the request timeout, mapping errors.
    async fn call<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.instance.request_timeout(), f).await {
            Err(_) => Err(EngineError::Unreachable("request timed out".into())),
            Ok(Err(e)) => Err(classify(e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn lease(&self) -> Result<i64, EngineError> {
        self.lease.lock().await.ok_or(EngineError::Expired)
    }

    fn owner_is(&self, source: &str, fence: &Fence) -> [Compare; 2] {
        let key = self.owner_key(source);
        [
            Compare::value(key.clone(), CompareOp::Equal, self.instance.id.clone()),
            Compare::create_revision(key, CompareOp::Equal, fence.token),
        ]
    }
}

fn classify(e: etcd_client::Error) -> EngineError {
    let text = e.to_string();
    if text.contains("lease not found") {
        EngineError::Expired
    } else {
        EngineError::Unreachable(text)
    }
}

#[async_trait]
impl Engine for EtcdEngine {
    async fn join(&self) -> Result<(), EngineError> {
        let mut client = self.client().await?;
        // Owner keys left on an earlier lease are freed now rather than at
        // its expiry (best effort: it may be gone already).
        if let Some(old) = self.lease.lock().await.take() {
            let _ = self.call(client.lease_revoke(old)).await;
        }
        let ttl = self.instance.lease_secs();
        let granted = self.call(client.lease_grant(ttl, None)).await?;
        let id = granted.id();
        *self.lease.lock().await = Some(id);
        let put = PutOptions::new().with_lease(id);
        self.call(client.put(self.member_key(), self.instance.id.clone(), Some(put)))
            .await?;
        Ok(())
    }

    async fn renew(&self) -> Result<(), EngineError> {
        let id = self.lease().await?;
        let mut client = self.client().await?;
        let (mut keeper, mut stream) = self.call(client.lease_keep_alive(id)).await?;
        self.call(keeper.keep_alive()).await?;
        match self.call(stream.message()).await? {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            Some(_) => {
                *self.lease.lock().await = None;
                Err(EngineError::Expired)
            }
            None => Err(EngineError::Unreachable("keep-alive stream closed".into())),
        }
    }

    async fn view(&self) -> Result<View, EngineError> {
        let mut client = self.client().await?;
        let resp = self
            .call(client.get(self.base.clone(), Some(GetOptions::new().with_prefix())))
            .await?;
        let mut view = View::default();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let rest = &key[self.base.len().min(key.len())..];
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            if let Some(m) = rest.strip_prefix("members/") {
                view.members.push(m.to_string());
            } else if let Some(s) = rest.strip_prefix("owners/") {
                view.owners.insert(s.to_string(), value);
            } else if let Some(s) = rest.strip_prefix("checkpoints/") {
                view.checkpoints.insert(s.to_string(), kv.value().to_vec());
            }
        }
        Ok(view)
    }

    async fn acquire(&self, source: &str) -> Result<Option<Fence>, EngineError> {
        let lease = self.lease().await?;
        let mut client = self.client().await?;
        let key = self.owner_key(source);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.instance.id.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.call(client.txn(txn)).await?;
        if !resp.succeeded() {
            // Ours already, on the lease we renew: an earlier acquisition
            // whose answer was lost. Nobody else can take it while the
            // lease lives, so it is ours to use (its create revision is
            // the fence) rather than an orphan until the lease ends.
            let adopted = resp.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| {
                    (kv.value() == self.instance.id.as_bytes() && kv.lease() == lease).then(|| {
                        Fence {
                            token: kv.create_revision(),
                        }
                    })
                }),
                _ => None,
            });
            return Ok(adopted);
        }
        let revision = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| EngineError::Unreachable("transaction answer without header".into()))?;
        Ok(Some(Fence { token: revision }))
    }

    async fn release(&self, source: &str, fence: &Fence) -> Result<(), EngineError> {
        let mut client = self.client().await?;
        let txn = Txn::new()
            .when(self.owner_is(source, fence))
            .and_then([TxnOp::delete(self.owner_key(source), None)]);
        self.call(client.txn(txn)).await?;
        Ok(())
    }

    async fn load(&self, source: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let mut client = self.client().await?;
        let resp = self
            .call(client.get(self.checkpoint_key(source), None))
            .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn save(&self, source: &str, fence: &Fence, state: &[u8]) -> Result<(), EngineError> {
        let mut client = self.client().await?;
        let txn = Txn::new()
            .when(self.owner_is(source, fence))
            .and_then([TxnOp::put(
                self.checkpoint_key(source),
                state.to_vec(),
                None,
            )]);
        let resp = self.call(client.txn(txn)).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(EngineError::Fenced)
        }
    }

    async fn reset(&self, source: &str) -> Result<bool, EngineError> {
        let mut client = self.client().await?;
        let resp = self
            .call(client.delete(self.checkpoint_key(source), None))
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn leave(&self) {
        let Some(id) = self.lease.lock().await.take() else {
            return;
        };
        if let Ok(mut client) = self.client().await {
            let _ = self.call(client.lease_revoke(id)).await;
        }
    }

    fn describe(&self, source: &str) -> String {
        format!("etcd key {}", self.checkpoint_key(source))
    }
}
