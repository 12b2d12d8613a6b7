//! The identity a container runs as: uid, gid and supplementary groups,
//! resolved from the image's /etc/passwd and /etc/group the way containerd
//! does. Those files belong to the image and are untrusted: they are opened with
//! `RESOLVE_IN_ROOT`, so a symlink such as `/etc/passwd -> /etc/passwd` or
//! `../../../etc/passwd` resolves inside the rootfs and never reaches the host's.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::SpecError;
use super::types::{SecurityContext, SupplementalGroupsPolicy};

/// Files bigger than this are not account databases.
const MAX_ACCOUNT_FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary gid first, then the image's groups for the user (unless the
    /// policy is `Strict`), then the requested supplemental groups; no repeats.
    pub additional_gids: Vec<u32>,
}

/// Resolves the user a container runs as. `run_as_username`, else
/// `run_as_user`, else the image's `User` (`uid`, `name`, `uid:gid`,
/// `name:gid`, `uid:group`, `name:group`) decides the user; `run_as_group`
/// overrides the group. A numeric uid missing from /etc/passwd runs with gid 0;
/// a name missing from it is an error.
pub fn resolve_user(rootfs: &Path, image_user: &str, security: &SecurityContext) -> Result<ResolvedUser, SpecError> {
    let (user_field, user, group) = requested_identity(image_user, security)?;
    let accounts = AccountFiles::open(rootfs)?;

    let (uid, primary_gid, username) = match user {
        UserRef::Id(uid) => match accounts.passwd()?.iter().find(|entry| entry.uid == uid) {
            Some(entry) => (uid, entry.gid, Some(entry.name.clone())),
            None => (uid, 0, None),
        },
        UserRef::Name(name) => match accounts.passwd()?.iter().find(|entry| entry.name == name) {
            Some(entry) => (entry.uid, entry.gid, Some(name)),
            None => {
                return Err(SpecError::invalid(user_field, format!("user {name:?} is not in the image's /etc/passwd")));
            }
        },
    };
    let gid = match group {
        None => primary_gid,
        Some(GroupRef::Id(gid)) => gid,
        Some(GroupRef::Name(name)) => match accounts.group()?.iter().find(|entry| entry.name == name) {
            Some(entry) => entry.gid,
            None => {
                return Err(SpecError::invalid(user_field, format!("group {name:?} is not in the image's /etc/group")));
            }
        },
    };

    let mut additional_gids = vec![gid];
    if security.supplemental_groups_policy == SupplementalGroupsPolicy::Merge
        && let Some(name) = &username
    {
        for entry in accounts.group()?.iter() {
            if entry.members.iter().any(|member| member == name) {
                additional_gids.push(entry.gid);
            }
        }
    }
    for (index, requested) in security.supplemental_groups.iter().enumerate() {
        additional_gids.push(id_from(*requested, &format!("security.supplemental_groups[{index}]"))?);
    }
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|gid| seen.insert(*gid));

    Ok(ResolvedUser { uid, gid, additional_gids })
}

#[derive(Debug, PartialEq)]
enum UserRef {
    Id(u32),
    Name(String),
}

#[derive(Debug, PartialEq)]
enum GroupRef {
    Id(u32),
    Name(String),
}

/// Which user and group were asked for, and the field to blame if they do not
/// resolve.
fn requested_identity(
    image_user: &str,
    security: &SecurityContext,
) -> Result<(&'static str, UserRef, Option<GroupRef>), SpecError> {
    let group_override =
        security.run_as_group.map(|gid| id_from(gid, "security.run_as_group").map(GroupRef::Id)).transpose()?;
    if !security.run_as_username.is_empty() {
        return Ok(("security.run_as_username", UserRef::Name(security.run_as_username.clone()), group_override));
    }
    if let Some(uid) = security.run_as_user {
        return Ok(("security.run_as_user", UserRef::Id(id_from(uid, "security.run_as_user")?), group_override));
    }
    if group_override.is_some() {
        return Err(SpecError::invalid(
            "security.run_as_group",
            "set without security.run_as_user or security.run_as_username",
        ));
    }
    if image_user.is_empty() {
        return Ok(("image user", UserRef::Id(0), None));
    }
    let (user, group) = match image_user.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (image_user, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(SpecError::invalid("image user", format!("{image_user:?} is not user[:group]")));
    }
    let user = match user.parse::<u32>() {
        Ok(uid) => UserRef::Id(uid),
        Err(_) => UserRef::Name(user.to_string()),
    };
    let group = group.map(|group| match group.parse::<u32>() {
        Ok(gid) => GroupRef::Id(gid),
        Err(_) => GroupRef::Name(group.to_string()),
    });
    Ok(("image user", user, group))
}

fn id_from(value: i64, field: &str) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| SpecError::invalid(field, format!("{value} is not a valid id (0..=4294967295)")))
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The image's account files, read lazily: a numeric `uid:gid` needs neither.
struct AccountFiles {
    root: OwnedFd,
    rootfs: std::path::PathBuf,
    passwd: std::cell::OnceCell<Vec<PasswdEntry>>,
    group: std::cell::OnceCell<Vec<GroupEntry>>,
}

impl AccountFiles {
    fn open(rootfs: &Path) -> Result<AccountFiles, SpecError> {
        let root = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| SpecError::host(format!("rootfs {}", rootfs.display()), errno.into()))?;
        Ok(AccountFiles { root, rootfs: rootfs.to_path_buf(), passwd: Default::default(), group: Default::default() })
    }

    fn passwd(&self) -> Result<&[PasswdEntry], SpecError> {
        if let Some(entries) = self.passwd.get() {
            return Ok(entries);
        }
        let text = self.read("etc/passwd")?;
        Ok(self.passwd.get_or_init(|| parse_passwd(&text)))
    }

    fn group(&self) -> Result<&[GroupEntry], SpecError> {
        if let Some(entries) = self.group.get() {
            return Ok(entries);
        }
        let text = self.read("etc/group")?;
        Ok(self.group.get_or_init(|| parse_group(&text)))
    }

    /// The file's text, or empty when the image has none.
    fn read(&self, relative: &str) -> Result<String, SpecError> {
        let context = || format!("image file {}/{relative}", self.rootfs.display());
        // O_PATH first: a FIFO or device planted at /etc/passwd is never opened.
        let node = match crate::inroot::resolve(&self.root, Path::new(relative), OFlags::PATH, ResolveFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
            Err(errno) => return Err(SpecError::host(context(), errno.into())),
        };
        let stat = rustix::fs::fstat(&node).map_err(|errno| SpecError::host(context(), errno.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(SpecError::host(
                context(),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"),
            ));
        }
        let fd = crate::inroot::reopen_file(node.as_fd()).map_err(|errno| SpecError::host(context(), errno.into()))?;
        let mut bytes = Vec::new();
        fd
            .take(MAX_ACCOUNT_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|error| SpecError::host(context(), error))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped, as
/// libc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            (!name.is_empty()).then(|| PasswdEntry { name: name.to_string(), uid, gid })
        })
        .collect()
}

/// `name:password:gid:member,member`.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let gid = fields.next()?.parse().ok()?;
            let members = fields
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|member| !member.is_empty())
                .map(str::to_string)
                .collect();
            (!name.is_empty()).then(|| GroupEntry { name: name.to_string(), gid, members })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::SpecError;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        alice:x:1000:1000::/home/alice:/bin/sh\n\
        bob:x:1001:1001::/home/bob:/bin/sh\n\
        broken line without fields\n";
    const GROUP: &str = "root:x:0:\n\
        alice:x:1000:\n\
        bob:x:1001:\n\
        staff:x:50:alice\n\
        audio:x:63:bob, alice\n\
        predefined:x:50000:alice\n";

    fn rootfs_with(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        if let Some(passwd) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        }
        if let Some(group) = group {
            std::fs::write(dir.path().join("etc/group"), group).unwrap();
        }
        dir
    }

    fn resolve(rootfs: &Path, image_user: &str, security: &SecurityContext) -> Result<(u32, u32, Vec<u32>), SpecError> {
        resolve_user(rootfs, image_user, security).map(|user| (user.uid, user.gid, user.additional_gids))
    }

    #[test]
    fn image_user_forms() {
        let rootfs = rootfs_with(Some(PASSWD), Some(GROUP));
        let default = SecurityContext::default();
        let root = rootfs.path();
        assert_eq!(resolve(root, "", &default).unwrap(), (0, 0, vec![0]));
        assert_eq!(resolve(root, "alice", &default).unwrap(), (1000, 1000, vec![1000, 50, 63, 50000]));
        assert_eq!(resolve(root, "1001", &default).unwrap(), (1001, 1001, vec![1001, 63]));
        assert_eq!(resolve(root, "1001:50", &default).unwrap(), (1001, 50, vec![50, 63]));
        assert_eq!(resolve(root, "alice:audio", &default).unwrap(), (1000, 63, vec![63, 50, 50000]));
        assert_eq!(resolve(root, "1000:staff", &default).unwrap(), (1000, 50, vec![50, 63, 50000]));
        assert_eq!(resolve(root, "bob:7", &default).unwrap(), (1001, 7, vec![7, 63]));
        // A uid the image does not know runs with gid 0 and no image groups.
        assert_eq!(resolve(root, "4242", &default).unwrap(), (4242, 0, vec![0]));
        assert_eq!(resolve(root, "4242:4243", &default).unwrap(), (4242, 4243, vec![4243]));
    }

    #[test]
    fn unknown_names_are_errors_naming_the_source() {
        let rootfs = rootfs_with(Some(PASSWD), Some(GROUP));
        let default = SecurityContext::default();
        let error = resolve(rootfs.path(), "mallory", &default).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "image user"), "{error}");
        assert!(error.to_string().contains("mallory"), "{error}");
        let error = resolve(rootfs.path(), "alice:nogroup", &default).unwrap_err();
        assert!(error.to_string().contains("nogroup"), "{error}");
        let security = SecurityContext { run_as_username: "mallory".into(), ..Default::default() };
        let error = resolve(rootfs.path(), "", &security).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "security.run_as_username"));
        assert!(matches!(resolve(rootfs.path(), ":5", &default), Err(SpecError::Invalid { .. })));
    }

    #[test]
    fn security_context_overrides_the_image_user() {
        let rootfs = rootfs_with(Some(PASSWD), Some(GROUP));
        let root = rootfs.path();
        let by_uid = SecurityContext { run_as_user: Some(1001), ..Default::default() };
        assert_eq!(resolve(root, "alice", &by_uid).unwrap(), (1001, 1001, vec![1001, 63]));
        let by_uid_gid = SecurityContext { run_as_user: Some(1000), run_as_group: Some(3000), ..Default::default() };
        assert_eq!(resolve(root, "bob", &by_uid_gid).unwrap(), (1000, 3000, vec![3000, 50, 63, 50000]));
        let by_name = SecurityContext { run_as_username: "bob".into(), run_as_user: Some(1000), ..Default::default() };
        assert_eq!(resolve(root, "alice", &by_name).unwrap(), (1001, 1001, vec![1001, 63]));

        let group_only = SecurityContext { run_as_group: Some(3000), ..Default::default() };
        let error = resolve(root, "alice", &group_only).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "security.run_as_group"), "{error}");
        let negative = SecurityContext { run_as_user: Some(-1), ..Default::default() };
        let error = resolve(root, "", &negative).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "security.run_as_user"), "{error}");
    }

    #[test]
    fn supplemental_groups_merge_or_stay_strict() {
        let rootfs = rootfs_with(Some(PASSWD), Some(GROUP));
        let merge = SecurityContext {
            run_as_user: Some(1000),
            supplemental_groups: vec![1234, 50, 5678],
            ..Default::default()
        };
        assert_eq!(resolve(rootfs.path(), "", &merge).unwrap(), (1000, 1000, vec![1000, 50, 63, 50000, 1234, 5678]));
        let strict = SecurityContext { supplemental_groups_policy: SupplementalGroupsPolicy::Strict, ..merge };
        assert_eq!(resolve(rootfs.path(), "", &strict).unwrap(), (1000, 1000, vec![1000, 1234, 50, 5678]));
        let bad = SecurityContext { supplemental_groups: vec![1, -5], ..Default::default() };
        let error = resolve(rootfs.path(), "", &bad).unwrap_err();
        assert!(
            matches!(&error, SpecError::Invalid { field, .. } if field == "security.supplemental_groups[1]"),
            "{error}"
        );
    }

    #[test]
    fn missing_account_files_leave_numeric_users_working() {
        let rootfs = rootfs_with(None, None);
        let default = SecurityContext::default();
        assert_eq!(resolve(rootfs.path(), "", &default).unwrap(), (0, 0, vec![0]));
        assert_eq!(resolve(rootfs.path(), "65535:65535", &default).unwrap(), (65535, 65535, vec![65535]));
        assert!(resolve(rootfs.path(), "nobody", &default).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs_never_on_the_host() {
        let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let host_only_user = parse_passwd(&host_passwd)
            .into_iter()
            .find(|entry| entry.name != "root")
            .expect("the host's /etc/passwd names a user besides root");

        // An absolute link to /etc/passwd points at itself inside the rootfs: a
        // loop, never the host's file.
        let rootfs = rootfs_with(None, Some(GROUP));
        std::os::unix::fs::symlink("/etc/passwd", rootfs.path().join("etc/passwd")).unwrap();
        let result = resolve(rootfs.path(), &host_only_user.name, &SecurityContext::default());
        assert!(result.is_err(), "resolved {:?} through the host's /etc/passwd", host_only_user.name);
        assert!(resolve(rootfs.path(), &host_only_user.uid.to_string(), &SecurityContext::default()).is_err());

        // Climbing out with .. stops at the rootfs too.
        let rootfs = rootfs_with(None, Some(GROUP));
        std::os::unix::fs::symlink("../../../../../../etc/passwd", rootfs.path().join("etc/passwd")).unwrap();
        assert!(resolve(rootfs.path(), &host_only_user.name, &SecurityContext::default()).is_err());

        // A link to a file inside the image is followed within the image.
        let rootfs = rootfs_with(None, Some(GROUP));
        std::fs::create_dir(rootfs.path().join("lib")).unwrap();
        std::fs::write(rootfs.path().join("lib/passwd.real"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/lib/passwd.real", rootfs.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(rootfs.path(), "bob", &SecurityContext::default()).unwrap().0, 1001);

        // A dangling link that would exist on the host counts as no file at all.
        let rootfs = rootfs_with(None, Some(GROUP));
        std::os::unix::fs::symlink("/etc/hostname", rootfs.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(rootfs.path(), "0", &SecurityContext::default()).unwrap(), (0, 0, vec![0]));
    }

    #[test]
    fn a_fifo_in_place_of_passwd_is_refused_without_blocking() {
        let rootfs = rootfs_with(None, Some(GROUP));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            rootfs.path().join("etc/passwd"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let error = resolve(rootfs.path(), "alice", &SecurityContext::default()).unwrap_err();
        assert!(matches!(error, SpecError::Host { .. }), "{error}");
    }
}
