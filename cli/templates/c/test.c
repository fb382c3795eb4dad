// Native test of filter.c (`make test`): calls its init and filter exports the way the
// bindings do in wasm, with arguments built here, on this machine's own C compiler.
// Add a case to `main` for each behaviour you change.

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "message_filter.h"

typedef message_filter_string_t str_t;

// In wasm the broker provides `host.log`; natively it prints here.
void __wasm_import_weir_filter_host_log(int32_t level, uint8_t *ptr, size_t len) {
    fprintf(stderr, "[log level %d] %.*s\n", (int)level, (int)len, (const char *)ptr);
}

// In wasm the bindings' component-type object is linked in; natively it is not needed.
void __component_type_object_force_link_message_filter(void) {}

static int failures = 0;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                      \
        }                                                                    \
    } while (0)

// Runs `init` with the `n` pairs `kv` (key, value, key, value, ...). Returns whether it
// accepted them; on refusal, copies its text into `why`.
static bool run_init(const char **kv, size_t n, char *why, size_t why_cap) {
    message_filter_list_tuple2_string_string_t params;
    params.len = n;
    params.ptr = calloc(n ? n : 1, sizeof(*params.ptr));
    if (!params.ptr) abort();
    for (size_t i = 0; i < n; i++) {
        message_filter_string_dup(&params.ptr[i].f0, kv[2 * i]);
        message_filter_string_dup(&params.ptr[i].f1, kv[2 * i + 1]);
    }
    exports_weir_filter_filter_needs_t needs = 0;
    exports_weir_filter_filter_filter_error_t err;
    bool ok = exports_weir_filter_filter_init(&params, &needs, &err);  // frees `params`
    if (!ok) {
        str_t *text = &err.val.bad_params;
        snprintf(why, why_cap, "%.*s", (int)text->len, (const char *)text->ptr);
        message_filter_string_free(text);
    }
    return ok;
}

// Puts a little-endian integer of `width` bytes at `p`.
static uint8_t *put_le(uint8_t *p, uint32_t v, int width) {
    for (int i = 0; i < width; i++) *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

// Runs `filter` over messages with the `n` tags given (no keys, properties or bodies),
// encoded as the broker encodes them; writes the verdicts to `keep`.
static bool run_filter(const char **tags, size_t n, bool *keep) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += 2 + strlen(tags[i]) + 4 + 4;
    message_filter_list_u8_t attributes = {malloc(total ? total : 1), total};
    exports_weir_filter_filter_list_message_t messages;
    messages.len = n;
    messages.ptr = calloc(n ? n : 1, sizeof(*messages.ptr));
    if (!attributes.ptr || !messages.ptr) abort();
    uint8_t *p = attributes.ptr;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(tags[i]);
        messages.ptr[i].queue_offset = i;
        messages.ptr[i].attributes_at = (uint32_t)(p - attributes.ptr);
        messages.ptr[i].attributes_len = (uint32_t)(2 + len + 4 + 4);
        p = put_le(p, (uint32_t)len, 2);  // the tag
        memcpy(p, tags[i], len);
        p += len;
        p = put_le(p, 0, 4);  // no keys
        p = put_le(p, 0, 4);  // no properties
    }
    exports_weir_filter_filter_batch_context_t ctx;
    message_filter_string_dup(&ctx.topic, "test");
    ctx.queue_id = 0;
    message_filter_string_dup(&ctx.consumer_group, "test");
    message_filter_list_bool_t verdicts;
    exports_weir_filter_filter_filter_error_t err;
    // `filter` frees its arguments.
    if (!exports_weir_filter_filter_filter(&ctx, &attributes, &messages, &verdicts, &err)) {
        fprintf(stderr, "filter failed: %.*s\n", (int)err.val.failed.len,
                (const char *)err.val.failed.ptr);
        message_filter_string_free(&err.val.failed);
        return false;
    }
    CHECK(verdicts.len == n);
    for (size_t i = 0; i < n && i < verdicts.len; i++) keep[i] = verdicts.ptr[i];
    free(verdicts.ptr);
    return true;
}

int main(void) {
    char why[256];

    // Parameters: `prefix` is required, non-empty, and the only one.
    CHECK(!run_init(NULL, 0, why, sizeof why));
    CHECK(strstr(why, "missing parameter \"prefix\"") != NULL);
    const char *empty[] = {"prefix", ""};
    CHECK(!run_init(empty, 1, why, sizeof why));
    const char *unknown[] = {"prefix", "a", "colour", "red"};
    CHECK(!run_init(unknown, 2, why, sizeof why));
    CHECK(strstr(why, "unknown parameter") != NULL);

    // Tags that start with the prefix are kept, nothing else.
    const char *order[] = {"prefix", "order."};
    CHECK(run_init(order, 1, why, sizeof why));
    const char *tags[] = {"order.created", "order", "orders.x", "", "Order.paid", "order."};
    const bool want[] = {true, false, false, false, false, true};
    bool keep[6] = {false};
    CHECK(run_filter(tags, 6, keep));
    for (size_t i = 0; i < 6; i++) {
        if (keep[i] != want[i]) {
            fprintf(stderr, "tag \"%s\": got %d, want %d\n", tags[i], keep[i], want[i]);
            failures++;
        }
    }
    CHECK(run_filter(NULL, 0, keep));  // an empty batch

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
