//! Filter processor: uploading, listing, resetting and removing consumer groups'
//! WebAssembly filters.
//! Compiling and initialising a component takes tens of milliseconds to seconds, so it
//! never runs on the network threads.

use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::filter::{
    FilterList, FilterRemoved, FilterReset, FilterUploaded, ListFilters, RemoveFilter, ResetFilter,
    UploadFilter,
};

use tracing::warn;

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};
use crate::filter::LoadedFilter;
use crate::topics::{validate_group_name, validate_topic_name};

impl Broker {
    pub async fn upload_filter(
        &self,
        req: UploadFilter,
        component: Bytes,
    ) -> Processed<FilterUploaded> {
        validate_group_name(&req.group)?;
        validate_topic_name(&req.topic)?;
        let filters = Arc::clone(&self.filters);
        let uploaded = tokio::task::spawn_blocking(move || {
            filters.upload(&req.group, &req.topic, &component, req.params, req.memory)
        })
        .await
        .map_err(|e| ProcessError::Internal(format!("filter upload task failed: {e}")))??;
        Ok(uploaded)
    }

    pub fn list_filters(&self, r: ListFilters) -> FilterList {
        self.filters.list(r.group.as_deref())
    }

    pub async fn remove_filter(&self, req: RemoveFilter) -> Processed<FilterRemoved> {
        let filters = Arc::clone(&self.filters);
        let (group, topic) = (req.group.clone(), req.topic.clone());
        let removed = tokio::task::spawn_blocking(move || filters.remove(&group, &topic))
            .await
            .map_err(|e| ProcessError::Internal(format!("filter remove task failed: {e}")))?
            .map_err(|e| ProcessError::Internal(e.to_string()))?;
        match removed {
            Some(version) => Ok(FilterRemoved { version }),
            None => Err(ProcessError::FilterNotFound(format!(
                "group {:?} has no filter on topic {:?}",
                req.group, req.topic
            ))),
        }
    }

    /// Clears the failed mark of the group's filter for the topic (in memory and on disk).
    pub async fn reset_filter(&self, req: ResetFilter) -> Processed<FilterReset> {
        let filters = Arc::clone(&self.filters);
        let (group, topic) = (req.group.clone(), req.topic.clone());
        let reset = tokio::task::spawn_blocking(move || filters.reset(&group, &topic))
            .await
            .map_err(|e| ProcessError::Internal(format!("filter reset task failed: {e}")))??;
        match reset {
            Some((version, cleared)) => Ok(FilterReset { version, cleared }),
            None => Err(ProcessError::FilterNotFound(format!(
                "group {:?} has no filter on topic {:?}",
                req.group, req.topic
            ))),
        }
    }

    /// Keeps a filter's new failed mark on disk, off the network threads; a failure to
    /// write is logged (the mark still holds in memory).
    pub(crate) async fn persist_filter_mark(&self, filter: &Arc<LoadedFilter>) {
        if filter.marked_failed().is_none() {
            return;
        }
        let (filters, f) = (Arc::clone(&self.filters), Arc::clone(filter));
        match tokio::task::spawn_blocking(move || filters.persist_mark(&f)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(filter = %filter.label(), error = %e, "cannot keep the filter's failed mark on disk")
            }
            Err(e) => warn!(filter = %filter.label(), error = %e, "filter mark task failed"),
        }
    }
}
