//! Subscription expressions: `*` or `TagA || TagB`.

use weir_store::tag_hash;

/// A subscription expression that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SubscriptionError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    All,
    /// Tags and their hashes; a message matches if its tag is one of them.
    Tags(Vec<(String, u64)>),
}

impl TagFilter {
    pub fn parse(expr: &str) -> Result<Self, SubscriptionError> {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return Ok(TagFilter::All);
        }
        let mut tags = Vec::new();
        for part in expr.split("||") {
            let tag = part.trim();
            if tag.is_empty() {
                return Err(SubscriptionError(format!(
                    "empty tag in subscription expression {expr:?}"
                )));
            }
            if tag == "*" {
                return Ok(TagFilter::All);
            }
            if tag.contains(['|', ' ', '\t']) {
                return Err(SubscriptionError(format!(
                    "bad tag {tag:?} in subscription expression {expr:?} (use `A || B`)"
                )));
            }
            tags.push((tag.to_owned(), tag_hash(tag)));
        }
        Ok(TagFilter::Tags(tags))
    }

    /// Cheap pre-check on a consume queue entry's tag hash.
    pub fn matches_hash(&self, hash: u64) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(t) => t.iter().any(|(_, h)| *h == hash),
        }
    }

    /// Exact check on the tag itself (hashes can collide).
    pub fn matches_tag(&self, tag: &str) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags(t) => t.iter().any(|(s, _)| s == tag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(TagFilter::parse("*").unwrap(), TagFilter::All);
        assert_eq!(TagFilter::parse("").unwrap(), TagFilter::All);
        let f = TagFilter::parse("TagA || TagB").unwrap();
        assert!(f.matches_tag("TagA") && f.matches_tag("TagB") && !f.matches_tag("TagC"));
        assert!(f.matches_hash(tag_hash("TagA")) && !f.matches_hash(tag_hash("TagC")));
        assert!(
            !f.matches_tag(""),
            "untagged messages do not match a tag list"
        );
        for bad in ["A ||", "|| B", "A | B", "A B"] {
            assert!(TagFilter::parse(bad).is_err(), "{bad}");
        }
    }
}
