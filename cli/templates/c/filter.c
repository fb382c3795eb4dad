// {{name}}: a weir message filter in C (written by `weir filter new`).
//
// Keeps the messages whose tag starts with the parameter `prefix` (required, non-empty),
// e.g. `--param prefix=order.`. Change `init` and `decide` to filter on anything else.
//
// The bindings in bindings/ are generated from wit/filter.wit by wit-bindgen-c. Memory,
// as they define it: an export owns its arguments and frees them; what it returns (the
// verdicts, an error's text) must come from malloc, as the bindings free it after the
// call; an import (weir_filter_host_log) only borrows its arguments.
//
// Keep to malloc and string functions: the broker gives a filter no WASI (no printf,
// files or clocks), and `make` refuses a module that imports any.

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "message_filter.h"

typedef message_filter_string_t str_t;

// The prefix `init` accepted, for the instance's lifetime.
static uint8_t *g_prefix = NULL;
static size_t g_prefix_len = 0;

// A malloc'd copy of `text` as a component-model string (returned errors need one).
static str_t owned_text(const char *text) {
    str_t s;
    s.len = strlen(text);
    s.ptr = malloc(s.len ? s.len : 1);
    if (!s.ptr) abort();
    memcpy(s.ptr, text, s.len);
    return s;
}

static bool str_is(const str_t *s, const char *lit) {
    return s->len == strlen(lit) && memcmp(s->ptr, lit, s->len) == 0;
}

static bool bad_params(exports_weir_filter_filter_filter_error_t *err, const char *why) {
    err->tag = WEIR_FILTER_TYPES_FILTER_ERROR_BAD_PARAMS;
    err->val.bad_params = owned_text(why);
    return false;
}

bool exports_weir_filter_filter_init(message_filter_list_tuple2_string_string_t *params,
                                     exports_weir_filter_filter_needs_t *ret,
                                     exports_weir_filter_filter_filter_error_t *err) {
    const str_t *prefix = NULL;
    const char *problem = NULL;
    for (size_t i = 0; i < params->len; i++) {
        if (str_is(&params->ptr[i].f0, "prefix")) {
            prefix = &params->ptr[i].f1;  // the last value wins
        } else {
            problem = "unknown parameter (this filter takes: prefix)";
        }
    }
    if (!problem && !prefix) problem = "missing parameter \"prefix\"";
    if (!problem && prefix->len == 0) problem = "parameter \"prefix\" must not be empty";
    if (!problem) {
        free(g_prefix);
        g_prefix = malloc(prefix->len);
        if (!g_prefix) abort();
        memcpy(g_prefix, prefix->ptr, prefix->len);
        g_prefix_len = prefix->len;
        str_t line = {(uint8_t *)"{{name}}: ready", strlen("{{name}}: ready")};
        weir_filter_host_log(WEIR_FILTER_TYPES_LEVEL_INFO, &line);  // borrows `line`
        *ret = 0;  // the tags suffice: no `needs.body`
    }
    message_filter_list_tuple2_string_string_free(params);  // the export owns it
    return problem ? bad_params(err, problem) : true;
}

// One message: its attributes start with a little-endian u16 tag length, then the tag.
static bool decide(const uint8_t *attrs, size_t len) {
    if (len < 2) return false;
    size_t tag_len = (size_t)attrs[0] | ((size_t)attrs[1] << 8);
    return tag_len <= len - 2 && tag_len >= g_prefix_len &&
           memcmp(attrs + 2, g_prefix, g_prefix_len) == 0;
}

bool exports_weir_filter_filter_filter(exports_weir_filter_filter_batch_context_t *ctx,
                                       message_filter_list_u8_t *attributes,
                                       exports_weir_filter_filter_list_message_t *messages,
                                       message_filter_list_bool_t *ret,
                                       exports_weir_filter_filter_filter_error_t *err) {
    (void)err;
    size_t n = messages->len;
    bool *verdicts = malloc(n ? n * sizeof(bool) : 1);
    if (!verdicts) abort();
    for (size_t i = 0; i < n; i++) {
        // This message's attributes: a slice of the batch's `attributes` bytes.
        size_t at = messages->ptr[i].attributes_at;
        size_t len = messages->ptr[i].attributes_len;
        bool inside = at <= attributes->len && len <= attributes->len - at;
        verdicts[i] = inside && decide(attributes->ptr + at, len);
    }
    // The export owns its arguments.
    exports_weir_filter_filter_batch_context_free(ctx);
    message_filter_list_u8_free(attributes);
    exports_weir_filter_filter_list_message_free(messages);
    ret->ptr = verdicts;  // freed by the bindings after the call
    ret->len = n;
    return true;
}
