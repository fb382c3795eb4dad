//! Consuming: pulling each assigned queue, handing messages to the listener (on the thread
//! pool, concurrently or in order), sending back what it could not process.

use super::*;

impl Core {
    /// Hands pulled messages to the listener (orderly: starts the queue's runner, which
    /// takes them from the queue in order).
    pub(super) fn dispatch(self: &Arc<Self>, pq: &Arc<ProcessQueue>, msgs: Vec<MessageExt>) {
        match &self.listener {
            Listener::Concurrently(_) => {
                let n = self.config.consume_message_batch_max_size;
                let mut jobs: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
                let mut msgs = msgs.into_iter().peekable();
                while msgs.peek().is_some() {
                    let batch: Vec<MessageExt> = msgs.by_ref().take(n).collect();
                    let (core, pq) = (Arc::clone(self), Arc::clone(pq));
                    jobs.push(Box::new(move || core.consume_concurrently(&pq, batch)));
                }
                self.pool.submit_all(jobs);
            }
            Listener::Orderly(_) => self.run_orderly_soon(pq, Duration::ZERO),
        }
    }

    pub(super) fn consume_concurrently(
        self: &Arc<Self>,
        pq: &Arc<ProcessQueue>,
        batch: Vec<MessageExt>,
    ) {
        let Listener::Concurrently(listener) = &self.listener else {
            return;
        };
        if self.stopping() {
            return;
        }
        let Some(_call) = pq.enter_call() else {
            return;
        };
        let mut ctx = ConsumeConcurrentlyContext {
            queue: pq.mq.clone(),
            delay_level_when_next_consume: 0,
            stop: self.stopping.clone(),
        };
        let status = catch_unwind(AssertUnwindSafe(|| listener.consume(&batch, &mut ctx)))
            .unwrap_or_else(|p| {
                warn!(group = %self.config.group, panic = %panic_text(p.as_ref()), "listener panicked; the batch is consumed again later");
                ConsumeConcurrentlyStatus::ReconsumeLater
            });
        let n = batch.len() as u64;
        if status == ConsumeConcurrentlyStatus::ConsumeSuccess {
            self.counters.consumed.fetch_add(n, Ordering::Relaxed);
            pq.remove(batch.iter().map(|m| m.queue_offset), &self.offsets);
            return;
        }
        self.counters.failed.fetch_add(n, Ordering::Relaxed);
        if self.stopping() {
            // Left uncommitted: the next run gets them.
            return;
        }
        if self.config.model == MessageModel::Broadcasting {
            for m in &batch {
                warn!(group = %self.config.group, msg_id = %m.msg_id, "broadcasting: a failed message is not retried");
            }
            pq.remove(batch.iter().map(|m| m.queue_offset), &self.offsets);
            return;
        }
        let mut retry_here = Vec::new();
        let mut done = Vec::new();
        for m in batch {
            let sent = self.runtime.block_on(self.send_back(
                &pq.mq,
                &m,
                ctx.delay_level_when_next_consume,
            ));
            match sent {
                Ok(r) => {
                    self.counters.sent_back.fetch_add(1, Ordering::Relaxed);
                    debug!(msg_id = %m.msg_id, to = %r.topic, reconsume_times = r.reconsume_times, "message sent back");
                    done.push(m.queue_offset);
                }
                Err(e) => {
                    self.counters
                        .send_back_failed
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(msg_id = %m.msg_id, error = %e, "cannot send the message back; consuming it again here");
                    retry_here.push(m);
                }
            }
        }
        pq.remove(done, &self.offsets);
        if !retry_here.is_empty() {
            for m in &mut retry_here {
                m.reconsume_times += 1;
            }
            let (core, pq) = (Arc::clone(self), Arc::clone(pq));
            self.runtime.spawn(async move {
                tokio::time::sleep(LOCAL_RETRY_DELAY).await;
                let again = Arc::clone(&core);
                core.pool
                    .submit(move || again.consume_concurrently(&pq, retry_here));
            });
        }
    }

    pub(super) async fn send_back(
        &self,
        mq: &MessageQueue,
        m: &MessageExt,
        delay_level: i32,
    ) -> Result<SentBack> {
        let addr = self.puller.master_addr(mq).await?;
        let req = ConsumerSendMsgBack {
            group: self.config.group.clone(),
            commit_log_offset: m.commit_log_offset,
            delay_level,
            max_reconsume_times: self.config.max_reconsume_times,
        };
        Ok(self.client.call(&addr, &req, Bytes::new()).await?.0)
    }

    /// Orderly: makes sure a runner will consume the queue's waiting messages.
    pub(super) fn run_orderly_soon(self: &Arc<Self>, pq: &Arc<ProcessQueue>, after: Duration) {
        if !pq.claim_runner() {
            return;
        }
        self.submit_orderly(pq, after);
    }

    pub(super) fn submit_orderly(self: &Arc<Self>, pq: &Arc<ProcessQueue>, after: Duration) {
        let (core, pq) = (Arc::clone(self), Arc::clone(pq));
        if after.is_zero() {
            self.pool.submit(move || core.consume_orderly(&pq));
        } else {
            self.runtime.spawn(async move {
                tokio::time::sleep(after).await;
                let again = Arc::clone(&core);
                core.pool.submit(move || again.consume_orderly(&pq));
            });
        }
    }

    /// Orderly: consumes the queue's waiting messages in order until none wait.
    pub(super) fn consume_orderly(self: &Arc<Self>, pq: &Arc<ProcessQueue>) {
        let Listener::Orderly(listener) = &self.listener else {
            return;
        };
        loop {
            // Without a valid lease another member may own the queue: wait for the renewal
            // (which restarts the runner).
            if pq.is_dropped() || self.stopping() || !pq.lock_valid() {
                pq.release_runner();
                return;
            }
            let Some(_call) = pq.enter_call() else {
                pq.release_runner();
                return;
            };
            let batch = pq.take_waiting(self.config.consume_message_batch_max_size);
            if batch.is_empty() {
                return;
            }
            let mut ctx = ConsumeOrderlyContext {
                queue: pq.mq.clone(),
                suspend_current_queue_time: self.config.suspend_current_queue_time,
                stop: self.stopping.clone(),
            };
            let status = catch_unwind(AssertUnwindSafe(|| listener.consume(&batch, &mut ctx)))
                .unwrap_or_else(|p| {
                    warn!(group = %self.config.group, panic = %panic_text(p.as_ref()), "orderly listener panicked; the queue is suspended a moment");
                    ConsumeOrderlyStatus::SuspendCurrentQueueAMoment
                });
            let n = batch.len() as u64;
            match status {
                ConsumeOrderlyStatus::Success => {
                    self.counters.consumed.fetch_add(n, Ordering::Relaxed);
                    pq.remove(batch.iter().map(|m| m.queue_offset), &self.offsets);
                }
                ConsumeOrderlyStatus::SuspendCurrentQueueAMoment => {
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                    pq.put_back(batch);
                    self.submit_orderly(pq, ctx.suspend_current_queue_time);
                    return;
                }
            }
        }
    }
}

/// A message pulled from the group's retry topic is shown with the topic it was sent to.
pub(super) fn restore_topic(m: &mut MessageExt) {
    if m.topic.starts_with(RETRY_PREFIX)
        && let Some(t) = m.property(property::RETRY_TOPIC)
    {
        m.topic = t.to_owned();
    }
}

pub(super) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}

pub(super) fn queue_ref(mq: &MessageQueue) -> QueueRef {
    QueueRef {
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
    }
}

/// Pulls one queue for as long as it is assigned, with flow control.
pub(super) async fn pull_loop(core: Arc<Core>, pq: Arc<ProcessQueue>, mut offset: u64) {
    let mut dropped = pq.dropped_signal();
    let orderly = core.listener.is_orderly();
    let leased = core.leased();
    let cfg = &core.config;
    let mut filter_failures: u32 = 0;
    loop {
        if pq.is_dropped() {
            return;
        }
        if pq.over_limits(
            cfg.pull_threshold_for_queue,
            cfg.pull_threshold_size_for_queue,
        ) {
            tokio::select! {
                _ = pq.space.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = dropped.wait_for(|d| *d) => return,
            }
            continue;
        }
        if leased && !pq.lock_valid() {
            // The lease lapsed (the broker was away at the last renewal, say): take it
            // again now rather than at the next renewal, unless another member holds it.
            let regained = tokio::select! {
                r = core.lock(std::slice::from_ref(&pq.mq)) => r.is_ok_and(|held| held.contains(&pq.mq)),
                _ = dropped.wait_for(|d| *d) => return,
            };
            if regained && !pq.is_dropped() {
                pq.set_locked(true);
                if orderly {
                    core.run_orderly_soon(&pq, Duration::ZERO);
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(PULL_RETRY_DELAY) => {}
                _ = dropped.wait_for(|d| *d) => return,
            }
            continue;
        }
        let pulled = tokio::select! {
            r = core.puller.pull(&pq.mq, &pq.expression, offset, cfg.pull_batch_size, Some(cfg.long_poll), None) => r,
            _ = dropped.wait_for(|d| *d) => return,
        };
        match pulled {
            Ok(out) => {
                filter_failures = 0;
                if out.status == PullStatus::OffsetMoved {
                    if out.next_offset > offset {
                        warn!(queue = ?pq.mq, from = offset, to = out.next_offset, lost = out.next_offset - offset, "messages this group had not consumed were deleted by the broker's retention; continuing after them");
                    } else {
                        warn!(queue = ?pq.mq, from = offset, to = out.next_offset, "offset beyond the end of the queue; moving back to it");
                    }
                }
                let mut msgs = out.messages;
                msgs.iter_mut().for_each(restore_topic);
                offset = out.next_offset;
                let received = msgs.len();
                let Some(for_listener) = pq.add(msgs, out.next_offset, orderly, &core.offsets)
                else {
                    return;
                };
                if received > 0 {
                    core.dispatch(&pq, for_listener);
                }
            }
            Err(ClientError::FilterFailed(f)) => {
                // Not the network's fault: tell the application, and wait longer each time
                // (a new version or a reset may come at any time).
                filter_failures = filter_failures.saturating_add(1);
                cfg.on_filter_failure.call(&f);
                tokio::select! {
                    _ = tokio::time::sleep(super::pull_failure::backoff(filter_failures)) => {}
                    _ = dropped.wait_for(|d| *d) => return,
                }
            }
            Err(e) => {
                cfg.on_pull_error.call(&pq.mq, &e);
                tokio::select! {
                    _ = tokio::time::sleep(PULL_RETRY_DELAY) => {}
                    _ = dropped.wait_for(|d| *d) => return,
                }
            }
        }
    }
}
