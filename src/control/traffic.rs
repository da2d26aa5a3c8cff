//! Traffic splits: the pure rules behind `spec.traffic` and `gcloud run services update-traffic`.
//!
//! A service's traffic is a `Vec<TrafficTarget>` kept in one normal form: one
//! entry per key that serves traffic (percent > 0, no tag), LATEST first and
//! then revisions in the order they first appeared, followed by one 0% entry
//! per tag, sorted by tag. The percents sum to exactly 100. Keeping tags in
//! their own entries means moving traffic never touches a tag and moving a tag
//! never touches traffic, which is how gcloud treats them too. `merged` turns
//! the normal form back into the shape Cloud Run prints, and `normalize` reads
//! the shape people write by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The longest tag accepted. A tag becomes part of the host name
/// `TAG---SERVICE`, which must fit one 63-character DNS label, so the tag alone
/// is capped well below 63 to leave room for the service name.
pub const MAX_TAG_LEN: usize = 46;

/// What a traffic target points at.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum TargetKey {
    /// The latest ready revision, whichever that is when a request arrives.
    Latest,
    /// One named revision.
    Revision(String),
}

impl TargetKey {
    /// Reads a key as gcloud does: the exact word `LATEST` means the latest
    /// ready revision, anything else is a revision name.
    pub fn parse(text: &str) -> TargetKey {
        if text == "LATEST" {
            TargetKey::Latest
        } else {
            TargetKey::Revision(text.to_owned())
        }
    }

    /// The revision this key sends requests to, given the service's latest ready revision.
    pub fn resolve<'a>(&'a self, latest_ready: Option<&'a str>) -> Option<&'a str> {
        match self {
            TargetKey::Latest => latest_ready,
            TargetKey::Revision(name) => Some(name),
        }
    }
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetKey::Latest => f.write_str("LATEST"),
            TargetKey::Revision(name) => f.write_str(name),
        }
    }
}

/// One entry of a service's traffic list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficTarget {
    pub key: TargetKey,
    pub percent: u32,
    pub tag: Option<String>,
}

/// The tag flags of `gcloud run services update-traffic`. They are applied in
/// gcloud's order: `clear`, then `set` (both replace every tag), then `remove`,
/// then `update`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagUpdate {
    /// `--set-tags`: these tags and no others.
    pub set: Option<Vec<(String, TargetKey)>>,
    /// `--update-tags`: add these tags, moving any that already exist.
    pub update: Vec<(String, TargetKey)>,
    /// `--remove-tags`: tags that are not present are ignored, as gcloud does.
    pub remove: Vec<String>,
    /// `--clear-tags`.
    pub clear: bool,
}

/// Why a traffic change or a written traffic list was refused. The texts are
/// gcloud's or Knative's where those exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrafficError {
    #[error("Traffic percentage value {value} is not an integer.")]
    NotAnInteger { value: String },

    #[error("Traffic percentage value {value} is not between 0 and 100.")]
    OutOfRange { value: String },

    #[error(
        "argument {flag}: Bad syntax for dict arg: [{item}]. \
         {flag} takes KEY=PERCENT pairs separated by commas, for example {flag}=NAME=10."
    )]
    BadSyntax { flag: String, item: String },

    #[error("argument {flag}: {key} is given more than once.")]
    DuplicateKey { flag: String, key: String },

    #[error("Traffic for {key} is specified more than once.")]
    TargetRepeated { key: TargetKey },

    #[error("Over 100% of traffic is specified.")]
    Over100,

    #[error("Every target with traffic is updated but 100% of traffic has not been specified.")]
    Under100,

    /// The stored traffic is broken; only reachable if state was corrupted.
    #[error("Current traffic allocation of {sum} is not 100 percent")]
    CurrentNot100 { sum: u64 },

    #[error("Traffic targets sum to {sum}, want 100")]
    SpecSum { sum: u64 },

    #[error("tag \"{tag}\" is used more than once")]
    DuplicateTag { tag: String },

    #[error(
        "Tag \"{tag}\" is not valid: a tag starts with a lower-case letter, holds only \
         lower-case letters, digits and hyphens (never three in a row), does not end with a \
         hyphen, and is at most {max} characters long.",
        max = MAX_TAG_LEN
    )]
    InvalidTag { tag: String },
}

/// Parses gcloud's `KEY=PCT,KEY=PCT` (`--to-revisions`, `--to-tags`). `flag`
/// is the flag's name as the user typed it, used only in messages.
pub fn parse_percentages(flag: &str, text: &str) -> Result<Vec<(String, u32)>, TrafficError> {
    let mut pairs: Vec<(String, u32)> = Vec::new();
    for item in text.split(',') {
        let bad_syntax = || TrafficError::BadSyntax {
            flag: flag.to_owned(),
            item: item.to_owned(),
        };
        // gcloud splits on the first `=`, so `a=b=1` is key `a` with value `b=1`.
        let (key, value) = item.split_once('=').ok_or_else(bad_syntax)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad_syntax());
        }
        let percent = parse_percent(value.trim())?;
        if pairs.iter().any(|(seen, _)| seen == key) {
            return Err(TrafficError::DuplicateKey {
                flag: flag.to_owned(),
                key: key.to_owned(),
            });
        }
        pairs.push((key.to_owned(), percent));
    }
    Ok(pairs)
}

/// A percentage flag's error as gcloud prints it: `argument FLAG: MESSAGE`, so every message
/// names the flag (the syntax errors already do).
pub fn flag_error(flag: &str, error: &TrafficError) -> String {
    let message = error.to_string();
    if message.starts_with("argument ") {
        message
    } else {
        format!("argument {flag}: {message}")
    }
}

/// gcloud reads a percentage with Python's `int()`, so a sign is part of an
/// integer: `-5` is an integer that is out of range, and `-0` is zero.
fn parse_percent(value: &str) -> Result<u32, TrafficError> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TrafficError::NotAnInteger {
            value: value.to_owned(),
        });
    }
    // Digits too many for a u32 are still an integer, just far out of range.
    match digits.parse::<u32>() {
        Ok(0) => Ok(0),
        Ok(n) if !negative && n <= 100 => Ok(n),
        _ => Err(TrafficError::OutOfRange {
            value: value.to_owned(),
        }),
    }
}

/// Checks a tag name, alone, against the rules in [`MAX_TAG_LEN`]'s comment
/// and Cloud Run's DNS-label rules.
pub fn validate_tag(tag: &str) -> Result<(), TrafficError> {
    let bytes = tag.as_bytes();
    let valid = matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !tag.ends_with('-')
        // `---` separates tag from service in a tag URL (`TAG---SERVICE.localhost`).
        && !tag.contains("---")
        && tag.len() <= MAX_TAG_LEN;
    if valid {
        Ok(())
    } else {
        Err(TrafficError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

/// Each key's percent, in the order the keys first appeared.
type Percents = Vec<(TargetKey, u32)>;

/// Each tag's key; a map because a tag points at exactly one key.
type Tags = BTreeMap<String, TargetKey>;

/// Applies `gcloud run services update-traffic` to a service's traffic: the
/// tag changes first, then the percentages (`None` when only tags change).
///
/// Named keys get exactly their value. Keys that serve traffic now but are not
/// named share what is left in proportion to their current percents. An
/// empty `current` is read as LATEST=100, the default of a new service.
pub fn update(
    current: &[TrafficTarget],
    tags: &TagUpdate,
    percentages: Option<&[(TargetKey, u32)]>,
) -> Result<Vec<TrafficTarget>, TrafficError> {
    let (mut percents, mut tag_map) = split_current(current)?;
    apply_tags(&mut tag_map, tags)?;
    if let Some(named) = percentages {
        percents = apply_percentages(&percents, named)?;
    }
    Ok(assemble(percents, tag_map))
}

/// Splits the current traffic into (key, percent) pairs and a tag map, after
/// checking it is sound enough to rescale.
fn split_current(current: &[TrafficTarget]) -> Result<(Percents, Tags), TrafficError> {
    if current.is_empty() {
        return Ok((vec![(TargetKey::Latest, 100)], BTreeMap::new()));
    }
    let mut percents = Vec::new();
    let mut tags = BTreeMap::new();
    for target in normalize(current) {
        match target.tag {
            None => percents.push((target.key, target.percent)),
            Some(tag) => {
                // normalize drops repeated (tag, key) pairs, so a repeat here
                // is one tag on two keys.
                if tags.insert(tag.clone(), target.key).is_some() {
                    return Err(TrafficError::DuplicateTag { tag });
                }
            }
        }
    }
    let sum: u64 = percents.iter().map(|(_, p)| u64::from(*p)).sum();
    if sum != 100 {
        return Err(TrafficError::CurrentNot100 { sum });
    }
    Ok((percents, tags))
}

fn apply_tags(tags: &mut Tags, change: &TagUpdate) -> Result<(), TrafficError> {
    if change.clear {
        tags.clear();
    }
    if let Some(set) = &change.set {
        *tags = tag_assignments(set)?;
    }
    for tag in &change.remove {
        tags.remove(tag);
    }
    // Inserting over an existing tag moves it, which is what gcloud's
    // "treat an update as a remove and an add" amounts to.
    tags.extend(tag_assignments(&change.update)?);
    Ok(())
}

/// Reads one `TAG=KEY` list, refusing a tag that is sent to two keys at once.
fn tag_assignments(list: &[(String, TargetKey)]) -> Result<Tags, TrafficError> {
    let mut map = BTreeMap::new();
    for (tag, key) in list {
        validate_tag(tag)?;
        if let Some(previous) = map.insert(tag.clone(), key.clone()) {
            if previous != *key {
                return Err(TrafficError::DuplicateTag { tag: tag.clone() });
            }
        }
    }
    Ok(map)
}

fn apply_percentages(
    current: &[(TargetKey, u32)],
    named: &[(TargetKey, u32)],
) -> Result<Percents, TrafficError> {
    // The range is checked before the sum so that a single bad value gets the
    // message about that value rather than the vaguer one about the total.
    for (index, (key, percent)) in named.iter().enumerate() {
        if *percent > 100 {
            return Err(TrafficError::OutOfRange {
                value: percent.to_string(),
            });
        }
        if named[..index].iter().any(|(seen, _)| seen == key) {
            return Err(TrafficError::TargetRepeated { key: key.clone() });
        }
    }
    let specified: u32 = named.iter().map(|(_, p)| p).sum();
    if specified > 100 {
        return Err(TrafficError::Over100);
    }
    let is_named = |key: &TargetKey| named.iter().any(|(k, _)| k == key);
    let unspecified: Vec<u32> = current
        .iter()
        .filter(|(key, _)| !is_named(key))
        .map(|(_, percent)| *percent)
        .collect();
    let rest = 100 - specified;
    // Targets at 0% cannot take a share in proportion to nothing, so they
    // count as absent; in normal form none exist, but the guard keeps the
    // division below safe for any input.
    if rest > 0 && unspecified.iter().all(|p| *p == 0) {
        return Err(TrafficError::Under100);
    }
    let mut shares = proportional(rest, &unspecified).into_iter();

    let mut result: Percents = current
        .iter()
        .map(|(key, _)| {
            let percent = match named.iter().find(|(k, _)| k == key) {
                Some((_, percent)) => *percent,
                None => shares.next().unwrap_or(0),
            };
            (key.clone(), percent)
        })
        .collect();
    for (key, percent) in named {
        if !current.iter().any(|(k, _)| k == key) {
            result.push((key.clone(), *percent));
        }
    }
    Ok(result)
}

/// Splits `total` in proportion to `weights` with gcloud's rounding: floor each
/// share, then add 1 to the shares that lost the most to the floor until the
/// total is reached. Ties go to the smaller weight (gcloud's rule), then to the
/// earlier entry, so the result never depends on anything but the input.
/// Integer arithmetic keeps it exact where gcloud uses floats.
fn proportional(total: u32, weights: &[u32]) -> Vec<u32> {
    let sum: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 || sum == 0 {
        return vec![0; weights.len()];
    }
    let total = u64::from(total);
    // Every share has the same denominator `sum`, so comparing the remainders
    // of `weight * total / sum` compares the fractional parts exactly.
    let exact: Vec<(u64, u64)> = weights
        .iter()
        .map(|w| {
            let scaled = u64::from(*w) * total;
            (scaled / sum, scaled % sum)
        })
        .collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        exact[b]
            .1
            .cmp(&exact[a].1)
            .then(weights[a].cmp(&weights[b]))
            .then(a.cmp(&b))
    });
    let floored: u64 = exact.iter().map(|(share, _)| share).sum();
    let mut shares: Vec<u32> = exact
        .iter()
        .map(|(share, _)| u32::try_from(*share).unwrap_or(u32::MAX))
        .collect();
    // The floors lose less than 1 each, so fewer than `weights.len()` need a bump.
    let missing = usize::try_from(total - floored).unwrap_or(usize::MAX);
    for &index in order.iter().take(missing) {
        shares[index] += 1;
    }
    shares
}

/// Builds the normal form: percent entries with LATEST first and revisions in
/// their given order, 0% ones dropped, then the tag entries in the order given.
fn assemble(
    percents: Percents,
    tags: impl IntoIterator<Item = (String, TargetKey)>,
) -> Vec<TrafficTarget> {
    let (latest, revisions): (Vec<_>, Vec<_>) = percents
        .into_iter()
        .filter(|(_, percent)| *percent > 0)
        .partition(|(key, _)| *key == TargetKey::Latest);
    latest
        .into_iter()
        .chain(revisions)
        .map(|(key, percent)| TrafficTarget {
            key,
            percent,
            tag: None,
        })
        .chain(tags.into_iter().map(|(tag, key)| TrafficTarget {
            key,
            percent: 0,
            tag: Some(tag),
        }))
        .collect()
}

/// Checks a traffic list written by hand in a service.yaml (`spec.traffic`).
/// An empty list is accepted because Cloud Run fills it in as LATEST=100.
pub fn validate_spec(targets: &[TrafficTarget]) -> Result<(), TrafficError> {
    if targets.is_empty() {
        return Ok(());
    }
    let mut seen = BTreeSet::new();
    let mut sum: u64 = 0;
    for target in targets {
        if target.percent > 100 {
            return Err(TrafficError::OutOfRange {
                value: target.percent.to_string(),
            });
        }
        sum += u64::from(target.percent);
        if let Some(tag) = &target.tag {
            validate_tag(tag)?;
            if !seen.insert(tag) {
                return Err(TrafficError::DuplicateTag { tag: tag.clone() });
            }
        }
    }
    if sum != 100 {
        return Err(TrafficError::SpecSum { sum });
    }
    Ok(())
}

/// Brings a hand-written traffic list into the normal form: percents summed
/// per key, every tag in its own 0% entry, untagged 0% entries dropped.
pub fn normalize(targets: &[TrafficTarget]) -> Vec<TrafficTarget> {
    let mut percents: Percents = Vec::new();
    let mut tags: Vec<(String, TargetKey)> = Vec::new();
    for target in targets {
        if target.percent > 0 {
            match percents.iter_mut().find(|(key, _)| *key == target.key) {
                Some((_, percent)) => *percent = percent.saturating_add(target.percent),
                None => percents.push((target.key.clone(), target.percent)),
            }
        }
        if let Some(tag) = &target.tag {
            tags.push((tag.clone(), target.key.clone()));
        }
    }
    tags.sort();
    tags.dedup();
    assemble(percents, tags)
}

/// The shape Cloud Run and Knative print: each key's alphabetically first tag
/// rides on that key's percent entry, and the other tags stay as 0% entries.
/// Any input is normalized first, so `normalize(merged(x)) == normalize(x)`.
pub fn merged(targets: &[TrafficTarget]) -> Vec<TrafficTarget> {
    let normal = normalize(targets);
    let (mut out, tag_entries): (Vec<_>, Vec<_>) =
        normal.into_iter().partition(|target| target.tag.is_none());
    let mut leftover = Vec::new();
    // Tag entries come sorted by tag, so the first one to reach a key is its
    // alphabetically first tag.
    for entry in tag_entries {
        match out
            .iter_mut()
            .find(|target| target.key == entry.key && target.tag.is_none())
        {
            Some(target) => target.tag = entry.tag,
            None => leftover.push(entry),
        }
    }
    out.extend(leftover);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn rev(name: &str) -> TargetKey {
        TargetKey::Revision(name.to_owned())
    }

    #[test]
    fn keys_resolve_to_the_revision_they_send_requests_to() {
        assert_eq!(TargetKey::Latest.resolve(Some("hello-2")), Some("hello-2"));
        assert_eq!(TargetKey::Latest.resolve(None), None);
        assert_eq!(rev("hello-1").resolve(Some("hello-2")), Some("hello-1"));
        assert_eq!(rev("hello-1").resolve(None), Some("hello-1"));
    }

    fn at(key: TargetKey, percent: u32) -> TrafficTarget {
        TrafficTarget {
            key,
            percent,
            tag: None,
        }
    }

    fn tagged(key: TargetKey, tag: &str) -> TrafficTarget {
        TrafficTarget {
            key,
            percent: 0,
            tag: Some(tag.to_owned()),
        }
    }

    fn to_revisions(current: &[TrafficTarget], named: &[(TargetKey, u32)]) -> Vec<TrafficTarget> {
        update(current, &TagUpdate::default(), Some(named)).expect("update succeeds")
    }

    fn update_err(current: &[TrafficTarget], named: &[(TargetKey, u32)]) -> String {
        update(current, &TagUpdate::default(), Some(named))
            .expect_err("update fails")
            .to_string()
    }

    fn sum(targets: &[TrafficTarget]) -> u32 {
        targets.iter().map(|t| t.percent).sum()
    }

    #[test]
    fn target_key_parses_and_prints_latest() {
        assert_eq!(TargetKey::parse("LATEST"), TargetKey::Latest);
        assert_eq!(TargetKey::parse("latest"), rev("latest"));
        assert_eq!(TargetKey::parse("hello-00001-abc"), rev("hello-00001-abc"));
        assert_eq!(TargetKey::Latest.to_string(), "LATEST");
        assert_eq!(rev("hello-00001-abc").to_string(), "hello-00001-abc");
    }

    #[test]
    fn parse_percentages_reads_pairs_in_order() {
        assert_eq!(
            parse_percentages("--to-revisions", "r2=90,LATEST=10, r3 = 0,r4=+0,r5=-0").unwrap(),
            vec![
                ("r2".to_owned(), 90),
                ("LATEST".to_owned(), 10),
                ("r3".to_owned(), 0),
                ("r4".to_owned(), 0),
                ("r5".to_owned(), 0),
            ]
        );
        assert_eq!(
            parse_percentages("--to-tags", "candidate=100").unwrap(),
            vec![("candidate".to_owned(), 100)]
        );
    }

    #[test]
    fn parse_percentages_errors_use_gclouds_texts() {
        let err = |text: &str| {
            parse_percentages("--to-revisions", text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("r1=ten"),
            "Traffic percentage value ten is not an integer."
        );
        assert_eq!(
            err("r1=1.5"),
            "Traffic percentage value 1.5 is not an integer."
        );
        assert_eq!(err("r1="), "Traffic percentage value  is not an integer.");
        assert_eq!(
            err("r1=101"),
            "Traffic percentage value 101 is not between 0 and 100."
        );
        assert_eq!(
            err("r1=99999999999999999999"),
            "Traffic percentage value 99999999999999999999 is not between 0 and 100."
        );
        // gcloud parses with Python's int(), for which -5 is an integer.
        assert_eq!(
            err("r1=-5"),
            "Traffic percentage value -5 is not between 0 and 100."
        );
        assert_eq!(
            err("r1=10,r2"),
            "argument --to-revisions: Bad syntax for dict arg: [r2]. --to-revisions takes \
             KEY=PERCENT pairs separated by commas, for example --to-revisions=NAME=10."
        );
        assert_eq!(
            parse_percentages("--to-tags", "=10").unwrap_err(),
            TrafficError::BadSyntax {
                flag: "--to-tags".to_owned(),
                item: "=10".to_owned()
            }
        );
        assert_eq!(
            parse_percentages("--to-tags", "").unwrap_err(),
            TrafficError::BadSyntax {
                flag: "--to-tags".to_owned(),
                item: String::new()
            }
        );
        assert_eq!(
            err("r1=10,r1=90"),
            "argument --to-revisions: r1 is given more than once."
        );
    }

    #[test]
    fn unnamed_targets_are_rescaled_proportionally() {
        let current = [at(rev("rev1"), 40), at(rev("rev2"), 60)];
        assert_eq!(
            to_revisions(&current, &[(rev("rev1"), 45)]),
            vec![at(rev("rev1"), 45), at(rev("rev2"), 55)]
        );
    }

    #[test]
    fn naming_a_revision_takes_traffic_from_latest() {
        let current = [at(TargetKey::Latest, 100)];
        assert_eq!(
            to_revisions(&current, &[(rev("rev1"), 10)]),
            vec![at(TargetKey::Latest, 90), at(rev("rev1"), 10)]
        );
    }

    #[test]
    fn three_way_rescale_rounds_by_largest_remainder() {
        // b gets 33*50/67 = 24.63 and c gets 34*50/67 = 25.37: floors 24 + 25
        // leave 1 over, which goes to b's larger remainder.
        let current = [at(rev("a"), 33), at(rev("b"), 33), at(rev("c"), 34)];
        let result = to_revisions(&current, &[(rev("a"), 50)]);
        assert_eq!(
            result,
            vec![at(rev("a"), 50), at(rev("b"), 25), at(rev("c"), 25)]
        );
        assert_eq!(sum(&result), 100);

        // Three shares of 10/3 each: floors give 9, the first target gets the 1.
        let current = [
            at(rev("a"), 10),
            at(rev("b"), 10),
            at(rev("c"), 10),
            at(rev("d"), 70),
        ];
        let result = to_revisions(&current, &[(rev("d"), 90)]);
        assert_eq!(
            result,
            vec![
                at(rev("a"), 4),
                at(rev("b"), 3),
                at(rev("c"), 3),
                at(rev("d"), 90)
            ]
        );
    }

    #[test]
    fn rounding_ties_go_to_the_smaller_target_first() {
        // c and b get 1.5 and 0.5: equal remainders, and gcloud gives the
        // spare percent to the target with less traffic, so neither vanishes.
        let current = [at(rev("c"), 30), at(rev("b"), 10), at(rev("a"), 60)];
        let result = to_revisions(&current, &[(rev("a"), 98)]);
        assert_eq!(
            result,
            vec![at(rev("c"), 1), at(rev("b"), 1), at(rev("a"), 98)]
        );
    }

    #[test]
    fn to_latest_replaces_everything_and_keeps_tags() {
        let current = [
            at(rev("rev1"), 40),
            at(rev("rev2"), 60),
            tagged(rev("rev1"), "blue"),
            tagged(rev("rev2"), "green"),
        ];
        assert_eq!(
            to_revisions(&current, &[(TargetKey::Latest, 100)]),
            vec![
                at(TargetKey::Latest, 100),
                tagged(rev("rev1"), "blue"),
                tagged(rev("rev2"), "green"),
            ]
        );
    }

    #[test]
    fn tags_are_applied_before_percentages() {
        let current = [at(rev("rev1"), 100)];
        let tags = TagUpdate {
            update: vec![("candidate".to_owned(), rev("rev2"))],
            ..TagUpdate::default()
        };
        // The caller resolves `--to-tags candidate=10` to rev2=10 using the
        // tags as they stand after this update.
        let result = update(&current, &tags, Some(&[(rev("rev2"), 10)])).unwrap();
        assert_eq!(
            result,
            vec![
                at(rev("rev1"), 90),
                at(rev("rev2"), 10),
                tagged(rev("rev2"), "candidate"),
            ]
        );
    }

    #[test]
    fn tag_flags_apply_in_gclouds_order() {
        let current = [
            at(TargetKey::Latest, 100),
            tagged(rev("r1"), "alpha"),
            tagged(rev("r2"), "beta"),
        ];
        let only_tags = |tags: TagUpdate| update(&current, &tags, None).unwrap();

        assert_eq!(
            only_tags(TagUpdate {
                clear: true,
                ..TagUpdate::default()
            }),
            vec![at(TargetKey::Latest, 100)]
        );
        assert_eq!(
            only_tags(TagUpdate {
                set: Some(vec![("gamma".to_owned(), TargetKey::Latest)]),
                ..TagUpdate::default()
            }),
            vec![
                at(TargetKey::Latest, 100),
                tagged(TargetKey::Latest, "gamma")
            ]
        );
        // Remove runs before update, so a tag both removed and updated ends
        // up at its new key; updating an existing tag moves it.
        assert_eq!(
            only_tags(TagUpdate {
                remove: vec!["alpha".to_owned(), "absent".to_owned()],
                update: vec![
                    ("alpha".to_owned(), rev("r3")),
                    ("beta".to_owned(), rev("r1")),
                ],
                ..TagUpdate::default()
            }),
            vec![
                at(TargetKey::Latest, 100),
                tagged(rev("r3"), "alpha"),
                tagged(rev("r1"), "beta"),
            ]
        );
        // Clear and set together: set wins over the cleared list.
        assert_eq!(
            only_tags(TagUpdate {
                clear: true,
                set: Some(vec![("delta".to_owned(), rev("r2"))]),
                ..TagUpdate::default()
            }),
            vec![at(TargetKey::Latest, 100), tagged(rev("r2"), "delta")]
        );
    }

    #[test]
    fn a_tag_cannot_point_at_two_keys() {
        let tags = TagUpdate {
            update: vec![
                ("canary".to_owned(), rev("r1")),
                ("canary".to_owned(), rev("r2")),
            ],
            ..TagUpdate::default()
        };
        assert_eq!(
            update(&[], &tags, None).unwrap_err().to_string(),
            "tag \"canary\" is used more than once"
        );
        // The same assignment twice is harmless.
        let tags = TagUpdate {
            set: Some(vec![
                ("canary".to_owned(), rev("r1")),
                ("canary".to_owned(), rev("r1")),
            ]),
            ..TagUpdate::default()
        };
        assert_eq!(
            update(&[], &tags, None).unwrap(),
            vec![at(TargetKey::Latest, 100), tagged(rev("r1"), "canary")]
        );
    }

    #[test]
    fn tag_names_are_validated() {
        for good in ["a", "canary", "v2", "blue-green", &"a".repeat(MAX_TAG_LEN)] {
            assert_eq!(validate_tag(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Canary",
            "2nd",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a---b",
            &"a".repeat(MAX_TAG_LEN + 1),
        ] {
            assert_eq!(
                validate_tag(bad),
                Err(TrafficError::InvalidTag {
                    tag: bad.to_owned()
                }),
                "{bad}"
            );
        }
        assert_eq!(
            validate_tag("Bad").unwrap_err().to_string(),
            "Tag \"Bad\" is not valid: a tag starts with a lower-case letter, holds only \
             lower-case letters, digits and hyphens (never three in a row), does not end with a \
             hyphen, and is at most 46 characters long."
        );
        let tags = TagUpdate {
            update: vec![("Bad".to_owned(), rev("r1"))],
            ..TagUpdate::default()
        };
        assert_eq!(
            update(&[], &tags, None),
            Err(TrafficError::InvalidTag {
                tag: "Bad".to_owned()
            })
        );
    }

    #[test]
    fn zero_percent_untagged_is_dropped_and_tagged_is_kept() {
        let current = [
            at(rev("r1"), 50),
            at(rev("r2"), 50),
            tagged(rev("r2"), "old"),
        ];
        assert_eq!(
            to_revisions(
                &current,
                &[(rev("r1"), 0), (rev("r2"), 0), (rev("r3"), 100)]
            ),
            vec![at(rev("r3"), 100), tagged(rev("r2"), "old")]
        );
        // A named 0% that is not current is not added either.
        assert_eq!(
            to_revisions(&current, &[(rev("r9"), 0), (rev("r1"), 100)]),
            vec![at(rev("r1"), 100), tagged(rev("r2"), "old")]
        );
    }

    #[test]
    fn empty_current_traffic_means_latest() {
        assert_eq!(
            update(&[], &TagUpdate::default(), None).unwrap(),
            vec![at(TargetKey::Latest, 100)]
        );
        assert_eq!(
            to_revisions(&[], &[(rev("r1"), 25)]),
            vec![at(TargetKey::Latest, 75), at(rev("r1"), 25)]
        );
    }

    #[test]
    fn update_errors_use_gclouds_texts() {
        let current = [at(rev("r1"), 40), at(rev("r2"), 60)];
        assert_eq!(
            update_err(&current, &[(rev("r1"), 60), (rev("r3"), 50)]),
            "Over 100% of traffic is specified."
        );
        assert_eq!(
            update_err(&current, &[(rev("r1"), 30), (rev("r2"), 60)]),
            "Every target with traffic is updated but 100% of traffic has not been specified."
        );
        assert_eq!(
            update_err(&current, &[(rev("r1"), 150)]),
            "Traffic percentage value 150 is not between 0 and 100."
        );
        assert_eq!(
            update_err(&current, &[(rev("r1"), 10), (rev("r1"), 20)]),
            "Traffic for r1 is specified more than once."
        );
        assert_eq!(
            update_err(&[at(rev("r1"), 90)], &[(rev("r1"), 100)]),
            "Current traffic allocation of 90 is not 100 percent"
        );
        assert_eq!(
            update_err(
                &[
                    at(rev("r1"), 100),
                    tagged(rev("r1"), "x"),
                    tagged(rev("r2"), "x")
                ],
                &[(rev("r1"), 100)]
            ),
            "tag \"x\" is used more than once"
        );
    }

    #[test]
    fn validate_spec_checks_range_sum_and_tags() {
        let spec = [
            TrafficTarget {
                key: rev("r1"),
                percent: 90,
                tag: Some("stable".to_owned()),
            },
            TrafficTarget {
                key: TargetKey::Latest,
                percent: 10,
                tag: Some("latest".to_owned()),
            },
            tagged(rev("r0"), "old"),
        ];
        assert_eq!(validate_spec(&spec), Ok(()));
        assert_eq!(validate_spec(&[]), Ok(()));

        assert_eq!(
            validate_spec(&spec[..1]).unwrap_err().to_string(),
            "Traffic targets sum to 90, want 100"
        );
        assert_eq!(
            validate_spec(&[at(rev("r1"), 101)])
                .unwrap_err()
                .to_string(),
            "Traffic percentage value 101 is not between 0 and 100."
        );
        let mut repeated = spec.to_vec();
        repeated.push(tagged(rev("r5"), "stable"));
        assert_eq!(
            validate_spec(&repeated).unwrap_err().to_string(),
            "tag \"stable\" is used more than once"
        );
        let mut invalid = spec.to_vec();
        invalid.push(tagged(rev("r5"), "Nope"));
        assert_eq!(
            validate_spec(&invalid),
            Err(TrafficError::InvalidTag {
                tag: "Nope".to_owned()
            })
        );
    }

    #[test]
    fn normalize_splits_tags_and_sums_repeated_keys() {
        let written = [
            TrafficTarget {
                key: rev("r2"),
                percent: 30,
                tag: Some("zeta".to_owned()),
            },
            at(rev("r1"), 0),
            TrafficTarget {
                key: TargetKey::Latest,
                percent: 50,
                tag: Some("alpha".to_owned()),
            },
            at(rev("r2"), 20),
            tagged(rev("r2"), "zeta"),
        ];
        assert_eq!(
            normalize(&written),
            vec![
                at(TargetKey::Latest, 50),
                at(rev("r2"), 50),
                tagged(TargetKey::Latest, "alpha"),
                tagged(rev("r2"), "zeta"),
            ]
        );
    }

    #[test]
    fn merged_folds_each_keys_first_tag() {
        let normal = vec![
            at(TargetKey::Latest, 60),
            at(rev("r1"), 40),
            tagged(rev("r1"), "blue"),
            tagged(rev("r1"), "azure"),
            tagged(rev("r0"), "old"),
        ];
        let normal = normalize(&normal);
        assert_eq!(
            merged(&normal),
            vec![
                at(TargetKey::Latest, 60),
                TrafficTarget {
                    key: rev("r1"),
                    percent: 40,
                    tag: Some("azure".to_owned()),
                },
                tagged(rev("r1"), "blue"),
                tagged(rev("r0"), "old"),
            ]
        );
        assert_eq!(normalize(&merged(&normal)), normal);
    }

    #[test]
    fn random_updates_keep_the_normal_form() {
        let mut rng = StdRng::seed_from_u64(0x7aff1c);
        let names = ["LATEST", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];
        let tag_names = ["a", "b", "c", "d"];
        let mut successes = 0;
        for _ in 0..20_000 {
            // Current: 1-6 distinct keys with positive percents summing to 100.
            let count = rng.random_range(1..=6usize);
            let mut current: Vec<TrafficTarget> = Vec::new();
            let mut left = 100u32;
            for (index, name) in names[..count].iter().enumerate() {
                let slots_after = u32::try_from(count - index - 1).unwrap();
                let percent = if slots_after == 0 {
                    left
                } else {
                    rng.random_range(1..=left - slots_after)
                };
                left -= percent;
                current.push(at(TargetKey::parse(name), percent));
            }
            for tag in tag_names {
                if rng.random_bool(0.3) {
                    let name = names[rng.random_range(0..names.len())];
                    current.push(tagged(TargetKey::parse(name), tag));
                }
            }
            let current = normalize(&current);

            // Update: some distinct keys, old or new, with a total of at most 100.
            let mut named: Vec<(TargetKey, u32)> = Vec::new();
            let mut budget = 100u32;
            for name in names {
                if rng.random_bool(0.35) {
                    let percent = rng.random_range(0..=budget);
                    budget -= percent;
                    named.push((TargetKey::parse(name), percent));
                }
            }
            let tags = TagUpdate {
                update: vec![(
                    tag_names[rng.random_range(0..tag_names.len())].to_owned(),
                    TargetKey::parse(names[rng.random_range(0..names.len())]),
                )],
                remove: vec![tag_names[rng.random_range(0..tag_names.len())].to_owned()],
                ..TagUpdate::default()
            };

            match update(&current, &tags, Some(&named)) {
                Ok(result) => {
                    successes += 1;
                    assert_eq!(sum(&result), 100, "{current:?} {named:?} -> {result:?}");
                    assert!(
                        result
                            .iter()
                            .all(|t| (t.percent > 0) != t.tag.is_some() && t.percent <= 100),
                        "{result:?}"
                    );
                    assert_eq!(normalize(&result), result);
                    assert_eq!(normalize(&merged(&result)), result);
                    for (key, percent) in &named {
                        let got: u32 = result
                            .iter()
                            .filter(|t| t.key == *key && t.tag.is_none())
                            .map(|t| t.percent)
                            .sum();
                        assert_eq!(got, *percent, "{key} in {result:?}");
                    }
                    // Unnamed targets are within one point of their exact share.
                    let specified: u32 = named.iter().map(|(_, p)| p).sum();
                    let unnamed: Vec<&TrafficTarget> = current
                        .iter()
                        .filter(|t| t.tag.is_none() && !named.iter().any(|(k, _)| *k == t.key))
                        .collect();
                    let from: u32 = unnamed.iter().map(|t| t.percent).sum();
                    for old in unnamed {
                        let exact =
                            f64::from(old.percent) * f64::from(100 - specified) / f64::from(from);
                        let got = result
                            .iter()
                            .find(|t| t.key == old.key && t.tag.is_none())
                            .map_or(0, |t| t.percent);
                        assert!((f64::from(got) - exact).abs() < 1.0, "{result:?}");
                    }
                }
                Err(TrafficError::Under100) => {
                    assert!(named.iter().map(|(_, p)| p).sum::<u32>() < 100);
                }
                Err(other) => panic!("unexpected {other} for {current:?} {named:?}"),
            }
        }
        assert!(successes > 10_000, "only {successes} updates succeeded");
    }
}
