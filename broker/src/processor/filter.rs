//! Filter processor: uploading, listing and removing consumer groups' WebAssembly filters.
//! Compiling and initialising a component takes tens of milliseconds to seconds, so it
//! never runs on the network threads.

use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::filter::{
    FilterList, FilterRemoved, FilterUploaded, ListFilters, RemoveFilter, UploadFilter,
};

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};
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
            filters.upload(&req.group, &req.topic, &component, req.params)
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
}
