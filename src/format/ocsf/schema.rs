//! The OCSF classes the mappings produce, as the schema defines them
//! (OCSF 1.9.0-dev: uids, captions, categories, enum values used).

/// The OCSF schema version the mappings follow (`metadata.version`).
pub const VERSION: &str = "1.9.0-dev";

/// One OCSF event class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub uid: u32,
    /// The class caption (`class_name`).
    pub name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
}

const IAM: (u32, &str) = (3, "Identity & Access Management");
const APPLICATION: (u32, &str) = (6, "Application Activity");

const fn class(uid: u32, name: &'static str, category: (u32, &'static str)) -> Class {
    Class {
        uid,
        name,
        category_uid: category.0,
        category_name: category.1,
    }
}

pub const BASE_EVENT: Class = class(0, "Base Event", (0, "Uncategorized"));
pub const ACCOUNT_CHANGE: Class = class(3001, "Account Change", IAM);
pub const AUTHENTICATION: Class = class(3002, "Authentication", IAM);
pub const ENTITY_MANAGEMENT: Class = class(3004, "Entity Management", IAM);
pub const API_ACTIVITY: Class = class(6003, "API Activity", APPLICATION);
pub const DETECTION_FINDING: Class = class(2004, "Detection Finding", (2, "Findings"));

/// `activity_id` values shared by every class.
pub const ACTIVITY_UNKNOWN: u32 = 0;
pub const ACTIVITY_OTHER: u32 = 99;

/// Authentication activities.
pub const LOGON: u32 = 1;
pub const LOGOFF: u32 = 2;

/// Account Change activities.
pub mod account {
    pub const CREATE: u32 = 1;
    pub const ENABLE: u32 = 2;
    pub const PASSWORD_CHANGE: u32 = 3;
    pub const PASSWORD_RESET: u32 = 4;
    pub const DISABLE: u32 = 5;
    pub const DELETE: u32 = 6;
    pub const ATTACH_POLICY: u32 = 7;
    pub const DETACH_POLICY: u32 = 8;
    pub const LOCK: u32 = 9;
    pub const UNLOCK: u32 = 12;
}

/// CRUD activities: API Activity 1–4, Entity Management 1–4 (and
/// Entity Management's 8 Enable, 9 Disable).
pub mod crud {
    pub const CREATE: u32 = 1;
    pub const READ: u32 = 2;
    pub const UPDATE: u32 = 3;
    pub const DELETE: u32 = 4;
    pub const ENABLE: u32 = 8;
    pub const DISABLE: u32 = 9;
}

/// Detection Finding activities.
pub mod finding {
    pub const CREATE: u32 = 1;
    pub const UPDATE: u32 = 2;
    pub const CLOSE: u32 = 3;
    /// `status_id` of a new finding.
    pub const STATUS_NEW: u32 = 1;
}

/// `severity_id`.
pub mod severity {
    pub const UNKNOWN: u32 = 0;
    pub const INFORMATIONAL: u32 = 1;
    pub const LOW: u32 = 2;
    pub const MEDIUM: u32 = 3;
    pub const HIGH: u32 = 4;
    pub const CRITICAL: u32 = 5;

    /// The caption of a `severity_id`.
    pub fn caption(id: u32) -> &'static str {
        match id {
            INFORMATIONAL => "Informational",
            LOW => "Low",
            MEDIUM => "Medium",
            HIGH => "High",
            CRITICAL => "Critical",
            _ => "Unknown",
        }
    }

    /// A vendor's severity word (`info`, `warning`, `critical`…).
    pub fn from_word(word: &str) -> u32 {
        match word.to_ascii_lowercase().as_str() {
            "info" | "informational" | "information" | "notice" | "debug" => INFORMATIONAL,
            "low" => LOW,
            "medium" | "warning" | "warn" | "moderate" => MEDIUM,
            "high" | "error" | "err" => HIGH,
            "critical" | "crit" | "fatal" | "emergency" | "alert" => CRITICAL,
            _ => UNKNOWN,
        }
    }
}

/// `status_id` of the event classes.
pub mod status {
    pub const UNKNOWN: u32 = 0;
    pub const SUCCESS: u32 = 1;
    pub const FAILURE: u32 = 2;

    pub fn caption(id: u32) -> &'static str {
        match id {
            SUCCESS => "Success",
            FAILURE => "Failure",
            _ => "Unknown",
        }
    }
}

/// The caption of an activity of a class, for `activity_name`.
pub fn activity_caption(class: Class, activity: u32) -> &'static str {
    match (class.uid, activity) {
        (_, ACTIVITY_UNKNOWN) => "Unknown",
        (_, ACTIVITY_OTHER) => "Other",
        (3002, LOGON) => "Logon",
        (3002, LOGOFF) => "Logoff",
        (3001, account::CREATE) => "Create",
        (3001, account::ENABLE) => "Enable",
        (3001, account::PASSWORD_CHANGE) => "Password Change",
        (3001, account::PASSWORD_RESET) => "Password Reset",
        (3001, account::DISABLE) => "Disable",
        (3001, account::DELETE) => "Delete",
        (3001, account::ATTACH_POLICY) => "Attach Policy",
        (3001, account::DETACH_POLICY) => "Detach Policy",
        (3001, account::LOCK) => "Lock",
        (3001, account::UNLOCK) => "Unlock",
        (2004, finding::CREATE) => "Create",
        (2004, finding::UPDATE) => "Update",
        (2004, finding::CLOSE) => "Close",
        (3004 | 6003, crud::CREATE) => "Create",
        (3004 | 6003, crud::READ) => "Read",
        (3004 | 6003, crud::UPDATE) => "Update",
        (3004 | 6003, crud::DELETE) => "Delete",
        (3004, crud::ENABLE) => "Enable",
        (3004, crud::DISABLE) => "Disable",
        _ => "Other",
    }
}
