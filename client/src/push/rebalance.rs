//! Rebalancing: which queues this member consumes (clustering: its share, leased on the
//! brokers; broadcasting: all), where each starts, and handing queues over cleanly.

use super::*;

impl Core {
    /// Brings the assigned queues in line with the allocation. True when something could
    /// not be settled and another try should come soon.
    pub(super) async fn rebalance(self: &Arc<Self>) -> bool {
        let _one = self.rebalancing.lock().await;
        if self.stopping() {
            return false;
        }
        let mut retry = false;
        let mut wanted: BTreeMap<MessageQueue, String> = BTreeMap::new();
        for (topic, expr) in &self.subscriptions {
            match self.allocation(topic).await {
                Ok(queues) => {
                    wanted.extend(queues.into_iter().map(|q| (q, expr.clone())));
                }
                Err(e) => {
                    debug!(group = %self.config.group, topic, error = %e, "cannot allocate the topic's queues now; keeping what this member has");
                    retry = true;
                    for (mq, pq) in self.queues().iter() {
                        if &mq.topic == topic {
                            wanted.insert(mq.clone(), pq.expression.clone());
                        }
                    }
                }
            }
        }
        let current: Vec<(MessageQueue, Arc<ProcessQueue>)> = self
            .queues()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (mq, pq) in &current {
            if !wanted.contains_key(mq) {
                self.release(pq).await;
                self.queues().remove(mq);
            }
        }
        for (mq, expression) in wanted {
            if self.queues().contains_key(&mq) {
                continue;
            }
            if self.leased() {
                match self.lock(std::slice::from_ref(&mq)).await {
                    Ok(held) if held.contains(&mq) => {}
                    Ok(_) => {
                        debug!(queue = ?mq, "queue still leased by its previous owner");
                        retry = true;
                        continue;
                    }
                    Err(e) => {
                        warn!(queue = ?mq, error = %e, "cannot lease the queue");
                        retry = true;
                        continue;
                    }
                }
            }
            let start = match self.start_offset(&mq).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(queue = ?mq, error = %e, "cannot find where to start on the queue");
                    retry = true;
                    if self.leased() {
                        self.unlock(vec![mq]).await;
                    }
                    continue;
                }
            };
            debug!(group = %self.config.group, queue = ?mq, start, "queue assigned");
            let pq = Arc::new(ProcessQueue::new(
                mq.clone(),
                expression,
                start,
                self.leased(),
            ));
            pq.set_locked(true);
            self.queues().insert(mq, Arc::clone(&pq));
            tokio::spawn(pull_loop(Arc::clone(self), pq, start));
        }
        retry
    }

    /// The queues of `topic` this member should consume.
    pub(super) async fn allocation(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        let route = self.client.route(topic, false).await?;
        let all = ClientInstance::queues(&route, topic, false);
        if all.is_empty() || self.config.model == MessageModel::Broadcasting {
            return Ok(all);
        }
        // Any master knows the group's members: one that can be reached.
        let masters: Vec<&str> = route
            .brokers
            .iter()
            .filter_map(|b| b.master_addr())
            .collect();
        let addr = masters
            .iter()
            .find(|a| self.client.available(a))
            .or(masters.first())
            .map(|a| (*a).to_owned())
            .ok_or_else(|| ClientError::NoRoute {
                topic: topic.to_owned(),
                detail: "no master broker".into(),
            })?;
        let req = GetConsumerList {
            group: self.config.group.clone(),
        };
        let members = self
            .client
            .call(&addr, &req, Bytes::new())
            .await?
            .0
            .client_ids;
        let me = self.client.client_id();
        if !members.iter().any(|m| m == me) {
            return Err(ClientError::Invalid(format!(
                "broker {addr} does not list this member of {} yet",
                self.config.group
            )));
        }
        Ok(allocate_averagely(&all, &members, me))
    }

    /// Where consumption of a newly assigned queue starts; a start not read from the
    /// store is recorded at once, so a hand-over continues from it.
    pub(super) async fn start_offset(&self, mq: &MessageQueue) -> Result<u64> {
        if let Some(o) = self.offsets.read(mq, &self.puller).await? {
            return Ok(o);
        }
        let bounds = self.puller.queue_offsets(mq).await?;
        let start = match self.config.consume_from {
            _ if mq.topic.starts_with(RETRY_PREFIX) => bounds.min,
            ConsumeFrom::FirstOffset => bounds.min,
            ConsumeFrom::LastOffset => bounds.max,
            ConsumeFrom::Timestamp(t) => self.puller.offset_for_timestamp(mq, t).await?,
        };
        self.offsets.update(mq, start);
        if self.config.model == MessageModel::Clustering {
            self.puller.commit_offset(mq, start).await?;
        }
        Ok(start)
    }

    /// The queue goes to another member: stop, let the listener calls under way on it end,
    /// commit, give the lease back.
    pub(super) async fn release(&self, pq: &ProcessQueue) {
        pq.drop_now();
        let waited = tokio::time::Instant::now();
        let mut warned = false;
        while !pq.idle() {
            let long = waited.elapsed() >= RELEASE_WAIT;
            if long && !warned {
                warn!(queue = ?pq.mq, "a listener call on a queue being handed on is taking long");
                warned = true;
            }
            // Concurrently, its messages may be consumed again elsewhere (at least once);
            // orderly, the next owner must not start before the call ends.
            if long && !self.listener.is_orderly() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.offsets.update(&pq.mq, pq.commit_offset());
        self.offsets.persist_and_forget(&pq.mq, &self.puller).await;
        if self.leased() {
            self.unlock(vec![pq.mq.clone()]).await;
        }
        debug!(group = %self.config.group, queue = ?pq.mq, "queue released");
    }

    /// Leases `queues` (of any brokers) for this member; returns those now held.
    pub(super) async fn lock(&self, queues: &[MessageQueue]) -> Result<Vec<MessageQueue>> {
        let mut held = Vec::new();
        for (addr, group) in self.by_broker(queues).await? {
            let req = LockBatchMq {
                group: self.config.group.clone(),
                client_id: self.client.client_id().to_owned(),
                queues: group.iter().map(queue_ref).collect(),
            };
            // Leases live on masters only: a queue whose master is down is not held, and
            // (orderly) pauses until its master returns.
            match self.client.call(&addr, &req, Bytes::new()).await {
                Ok((got, _)) => held.extend(
                    group
                        .into_iter()
                        .filter(|mq| got.queues.contains(&queue_ref(mq))),
                ),
                Err(e) => warn!(broker = %addr, error = %e, "cannot lease queues of this master"),
            }
        }
        Ok(held)
    }

    pub(super) async fn unlock(&self, queues: Vec<MessageQueue>) {
        let groups = match self.by_broker(&queues).await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "cannot give queue leases back; they expire on their own");
                return;
            }
        };
        for (addr, group) in groups {
            let req = UnlockBatchMq {
                group: self.config.group.clone(),
                client_id: self.client.client_id().to_owned(),
                queues: group.iter().map(queue_ref).collect(),
            };
            if let Err(e) = self.client.call(&addr, &req, Bytes::new()).await {
                warn!(broker = %addr, error = %e, "cannot give queue leases back; they expire on their own");
            }
        }
    }

    /// Queues by the address of their broker's master; queues whose broker has no master
    /// now are left out.
    pub(super) async fn by_broker(
        &self,
        queues: &[MessageQueue],
    ) -> Result<BTreeMap<String, Vec<MessageQueue>>> {
        let mut out: BTreeMap<String, Vec<MessageQueue>> = BTreeMap::new();
        for mq in queues {
            match self.puller.master_addr(mq).await {
                Ok(addr) => out.entry(addr).or_default().push(mq.clone()),
                Err(ClientError::NoRoute { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Renews the leases of every assigned queue; a queue whose lease was lost pauses
    /// until it is regained.
    pub(super) async fn renew_leases(self: &Arc<Self>) {
        let current: Vec<Arc<ProcessQueue>> = self.queues().values().cloned().collect();
        let mqs: Vec<MessageQueue> = current.iter().map(|pq| pq.mq.clone()).collect();
        match self.lock(&mqs).await {
            Ok(held) => {
                for pq in &current {
                    let ok = held.contains(&pq.mq);
                    if !ok {
                        warn!(queue = ?pq.mq, "lease lost; the queue pauses until it is regained");
                    }
                    pq.set_locked(ok);
                    if ok && self.listener.is_orderly() {
                        self.run_orderly_soon(pq, Duration::ZERO);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot renew queue leases"),
        }
    }
}

pub(super) async fn rebalance_loop(
    core: Arc<Core>,
    trigger: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
    mut retry_soon: bool,
) {
    loop {
        let wait = if retry_soon {
            REBALANCE_RETRY.min(core.config.rebalance_interval)
        } else {
            core.config.rebalance_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        retry_soon = core.rebalance().await;
    }
}
