// c-tag-prefix: a weir message filter written in C against wit/filter.wit.
//
// Keeps the messages whose tag starts with the parameter `prefix`.
//
// Parameters (given at upload, `weir filter upload --param K=V`):
//   prefix  required, non-empty: the tag prefix to keep.
//   log     optional flag (true/false, yes/no, 1/0, on/off; default false): when true,
//           `init` writes one line to the broker's log through the imported `host.log`.
// A parameter given twice takes its last value, as in the Rust SDK; any other parameter
// is rejected with `bad-params`.
//
// The bindings (`message_filter.h`, `message_filter.c`, `message_filter_component_type.o`)
// are generated from wit/filter.wit by wit-bindgen-c at build time; see README.md.
//
// Ownership, as the generated bindings define it: an export owns its arguments and
// must free them; a returned error string is freed by the bindings after the call
// (post-return), so it must be heap-allocated. Imports borrow their arguments.

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "message_filter.h"

typedef message_filter_string_t str_t;

// The prefix `init` accepted, owned by the filter for the instance's lifetime.
static uint8_t *g_prefix = NULL;
static size_t g_prefix_len = 0;
static bool g_ready = false;

// ---------------------------------------------------------------------------------------
// A tiny growable byte buffer for error and log texts (no printf: it would pull in stdio).

typedef struct {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} buf_t;

static void buf_put(buf_t *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + len) cap *= 2;
        uint8_t *p = realloc(b->ptr, cap);
        if (!p) abort();
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, data, len);
    b->len += len;
}

static void buf_cstr(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

// Appends `s` quoted like Rust's `{:?}` does for plain text (quotes, backslash, control
// characters escaped), so messages read like the Rust SDK's.
static void buf_quoted(buf_t *b, const uint8_t *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    buf_put(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            uint8_t esc[2] = {'\\', c};
            buf_put(b, esc, 2);
        } else if (c == '\n') {
            buf_cstr(b, "\\n");
        } else if (c == '\r') {
            buf_cstr(b, "\\r");
        } else if (c == '\t') {
            buf_cstr(b, "\\t");
        } else if (c < 0x20 || c == 0x7f) {
            char esc[6] = {'\\', 'u', '{', hex[c >> 4], hex[c & 15], '}'};
            buf_put(b, esc, 6);
        } else {
            buf_put(b, &c, 1);
        }
    }
    buf_put(b, "\"", 1);
}

// Hands the buffer over as a component-model string (freed by the bindings' post-return).
static str_t buf_into_string(buf_t *b) {
    str_t s;
    if (b->len == 0) {
        free(b->ptr);
        s.ptr = NULL;
        s.len = 0;
    } else {
        s.ptr = b->ptr;
        s.len = b->len;
    }
    b->ptr = NULL;
    b->len = b->cap = 0;
    return s;
}

static bool set_error(exports_weir_filter_filter_filter_error_t *err, uint8_t tag, buf_t *b) {
    err->tag = tag;
    if (tag == WEIR_FILTER_TYPES_FILTER_ERROR_BAD_PARAMS) {
        err->val.bad_params = buf_into_string(b);
    } else {
        err->val.failed = buf_into_string(b);
    }
    return false;
}

static bool str_eq(const str_t *s, const char *lit) {
    size_t n = strlen(lit);
    return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

// The Rust SDK's flag syntax: trimmed, ASCII case-insensitive.
static int parse_flag(const str_t *v) {
    const uint8_t *p = v->ptr;
    size_t n = v->len;
    while (n > 0 && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++, n--;
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\n' || p[n - 1] == '\r')) n--;
    char lower[6];
    if (n == 0 || n > 5) return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        lower[i] = (char)((c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c);
    }
    lower[n] = 0;
    static const char *const yes[] = {"true", "yes", "1", "on"};
    static const char *const no[] = {"false", "no", "0", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(lower, yes[i]) == 0) return 1;
        if (strcmp(lower, no[i]) == 0) return 0;
    }
    return -1;
}

// ---------------------------------------------------------------------------------------
// init

bool exports_weir_filter_filter_init(message_filter_list_tuple2_string_string_t *params,
                                     exports_weir_filter_filter_needs_t *ret,
                                     exports_weir_filter_filter_filter_error_t *err) {
    const str_t *prefix = NULL;
    const str_t *log = NULL;
    buf_t msg = {0};
    bool ok = true;

    for (size_t i = 0; i < params->len && ok; i++) {
        const str_t *k = &params->ptr[i].f0;
        const str_t *v = &params->ptr[i].f1;
        if (str_eq(k, "prefix")) {
            prefix = v;  // last one wins
        } else if (str_eq(k, "log")) {
            log = v;
        } else {
            buf_cstr(&msg, "unknown parameter ");
            buf_quoted(&msg, k->ptr, k->len);
            buf_cstr(&msg, " (this filter takes: prefix, log)");
            ok = false;
        }
    }

    int log_flag = 0;
    if (ok && log != NULL) {
        log_flag = parse_flag(log);
        if (log_flag < 0) {
            buf_cstr(&msg, "parameter \"log\": expected true or false, got ");
            buf_quoted(&msg, log->ptr, log->len);
            ok = false;
        }
    }
    if (ok && prefix == NULL) {
        buf_cstr(&msg, "missing parameter \"prefix\" (the tag prefix of the messages to keep)");
        ok = false;
    }
    if (ok && prefix->len == 0) {
        buf_cstr(&msg, "parameter \"prefix\": must not be empty (an empty prefix keeps every message)");
        ok = false;
    }

    if (ok) {
        uint8_t *copy = malloc(prefix->len);
        if (!copy) abort();
        memcpy(copy, prefix->ptr, prefix->len);
        free(g_prefix);
        g_prefix = copy;
        g_prefix_len = prefix->len;
        g_ready = true;

        if (log_flag == 1) {
            buf_t line = {0};
            buf_cstr(&line, "c-tag-prefix: keeping messages whose tag starts with ");
            buf_quoted(&line, g_prefix, g_prefix_len);
            str_t s = {line.ptr, line.len};
            weir_filter_host_log(WEIR_FILTER_TYPES_LEVEL_INFO, &s);  // borrows `s`
            free(line.ptr);
        }
        *ret = 0;  // attributes suffice: no `needs.body`
    }

    // The export owns its arguments.
    message_filter_list_tuple2_string_string_free(params);
    if (!ok) return set_error(err, WEIR_FILTER_TYPES_FILTER_ERROR_BAD_PARAMS, &msg);
    return true;
}

// ---------------------------------------------------------------------------------------
// filter

static uint16_t read_u16_le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

bool exports_weir_filter_filter_filter(exports_weir_filter_filter_batch_context_t *ctx,
                                       message_filter_list_u8_t *attributes,
                                       exports_weir_filter_filter_list_message_t *messages,
                                       message_filter_list_bool_t *ret,
                                       exports_weir_filter_filter_filter_error_t *err) {
    buf_t msg = {0};
    bool ok = true;
    size_t n = messages->len;
    bool *verdicts = NULL;

    if (!g_ready) {
        buf_cstr(&msg, "filter called before a successful init");
        ok = false;
    } else if (n > 0) {
        verdicts = malloc(n * sizeof(bool));
        if (!verdicts) abort();
    }

    for (size_t i = 0; i < n && ok; i++) {
        // This message's attributes: a slice of the batch's `attributes` bytes.
        size_t at = messages->ptr[i].attributes_at;
        size_t len = messages->ptr[i].attributes_len;
        bool inside = at <= attributes->len && len <= attributes->len - at;
        const uint8_t *a = inside ? attributes->ptr + at : NULL;
        // `u16` tag length, then the tag; keys and properties follow and are not needed.
        size_t tag_len = inside && len >= 2 ? read_u16_le(a) : 0;
        if (!inside || len < 2 || len - 2 < tag_len) {
            // The broker validates the encoding; this only guards against a contract break.
            buf_cstr(&msg, "malformed attributes (tag length past the end) at queue offset ");
            char digits[20];
            size_t nd = 0;
            uint64_t off = messages->ptr[i].queue_offset;
            do { digits[nd++] = (char)('0' + off % 10); off /= 10; } while (off);
            while (nd) buf_put(&msg, &digits[--nd], 1);
            ok = false;
            break;
        }
        verdicts[i] = tag_len >= g_prefix_len && memcmp(a + 2, g_prefix, g_prefix_len) == 0;
    }

    // The export owns its arguments.
    exports_weir_filter_filter_batch_context_free(ctx);
    message_filter_list_u8_free(attributes);
    exports_weir_filter_filter_list_message_free(messages);

    if (!ok) {
        free(verdicts);
        return set_error(err, WEIR_FILTER_TYPES_FILTER_ERROR_FAILED, &msg);
    }
    ret->ptr = verdicts;  // freed by the bindings' post-return
    ret->len = n;
    return true;
}
