//! Writing a batch's `usage_log` rows, a row per call: all at once with `COPY` (the rule:
//! every row is new), or with an insert that skips the rows already written (a batch
//! written again after its commit's answer was lost). `COPY` costs PostgreSQL less per row
//! than an insert from arrays (docs/benchmarks.md, "fourth round"): no `ON CONFLICT` check,
//! no array decoding, rows written to the table several at a time. A row already there
//! fails it with a unique violation.

use std::collections::HashSet;
use std::fmt::Write;

use sqlx::{Postgres, Transaction};

use crate::billing::Decimal;
use crate::journal::{EntryData, UsageRecord};

const COPY: &str = "COPY data.usage_log (request_id, user_id, tenant_id, virtual_key_id, provider, model, \
    input_tokens, output_tokens, tokens, input_rate, output_rate, markup_percent, \
    platform_cost, cost, usage_source, created_at, cached_input_tokens, cache_write_tokens, \
    reasoning_tokens, cached_input_rate, cache_write_rate, reasoning_output_rate) FROM STDIN";

fn tokens(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Writes the rows of `charges` with `COPY ... FROM STDIN` (text format).
pub(super) async fn copy(
    tx: &mut Transaction<'static, Postgres>,
    charges: &[(&EntryData, &UsageRecord)],
) -> Result<(), sqlx::Error> {
    let mut rows = String::with_capacity(charges.len() * 320);
    for (e, u) in charges {
        row(&mut rows, e, u);
    }
    let mut copy = tx.copy_in_raw(COPY).await?;
    copy.send(rows.as_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

/// One row in `COPY`'s text format: fields separated by tabs, `\N` for NULL.
fn row(out: &mut String, e: &EntryData, u: &UsageRecord) {
    let usage = &u.usage;
    text(out, &e.request_id);
    // Writing to a String does not fail.
    let _ = write!(
        out,
        "\t{}\t{}\t{}\t",
        e.user_id, u.tenant_id, u.virtual_key_id
    );
    text(out, &u.provider);
    out.push('\t');
    text(out, &u.model);
    let _ = write!(
        out,
        "\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
        tokens(usage.input_tokens),
        tokens(usage.output_tokens),
        i32::try_from(usage.total()).unwrap_or(i32::MAX),
        u.input_rate,
        u.output_rate,
        u.markup_percent,
        u.platform_cost,
        -e.delta,
        u.usage_source,
        // Microseconds, as PostgreSQL keeps them (and as a bound timestamp is truncated).
        e.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        tokens(usage.cached_input_tokens),
        tokens(usage.cache_write_tokens),
        tokens(usage.reasoning_tokens),
    );
    null_or(out, u.cached_input_rate);
    out.push('\t');
    null_or(out, u.cache_write_rate);
    out.push('\t');
    null_or(out, u.reasoning_output_rate);
    out.push('\n');
}

/// An optional rate: `\N` for none.
fn null_or(out: &mut String, rate: Option<Decimal>) {
    match rate {
        Some(r) => {
            let _ = write!(out, "{r}");
        }
        None => out.push_str("\\N"),
    }
}

/// A text field, with the characters `COPY` gives a meaning escaped.
fn text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Inserts the rows of `charges` but those already written; returns the request ids
/// inserted.
pub(super) async fn insert_skipping_written(
    tx: &mut Transaction<'static, Postgres>,
    charges: &[(&EntryData, &UsageRecord)],
) -> Result<HashSet<String>, sqlx::Error> {
    let n = charges.len();
    let mut ids = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut providers = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    let mut ins = Vec::with_capacity(n);
    let mut outs = Vec::with_capacity(n);
    let mut totals = Vec::with_capacity(n);
    let mut in_rates = Vec::with_capacity(n);
    let mut out_rates = Vec::with_capacity(n);
    let mut markups = Vec::with_capacity(n);
    let mut platform = Vec::with_capacity(n);
    let mut costs = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut cached = Vec::with_capacity(n);
    let mut written = Vec::with_capacity(n);
    let mut reasoning = Vec::with_capacity(n);
    let mut cached_rates = Vec::with_capacity(n);
    let mut write_rates = Vec::with_capacity(n);
    let mut reasoning_rates = Vec::with_capacity(n);
    for (e, u) in charges {
        ids.push(e.request_id.as_str());
        users.push(e.user_id);
        tenants.push(u.tenant_id);
        keys.push(u.virtual_key_id);
        providers.push(u.provider.as_str());
        models.push(u.model.as_str());
        ins.push(tokens(u.usage.input_tokens));
        outs.push(tokens(u.usage.output_tokens));
        totals.push(i32::try_from(u.usage.total()).unwrap_or(i32::MAX));
        in_rates.push(u.input_rate);
        out_rates.push(u.output_rate);
        markups.push(u.markup_percent);
        platform.push(u.platform_cost);
        costs.push(-e.delta);
        sources.push(u.usage_source);
        times.push(e.created_at);
        cached.push(tokens(u.usage.cached_input_tokens));
        written.push(tokens(u.usage.cache_write_tokens));
        reasoning.push(tokens(u.usage.reasoning_tokens));
        cached_rates.push(u.cached_input_rate);
        write_rates.push(u.cache_write_rate);
        reasoning_rates.push(u.reasoning_output_rate);
    }
    let query = sqlx::query_scalar(
        "INSERT INTO data.usage_log
             (request_id, user_id, tenant_id, virtual_key_id, provider, model, input_tokens,
              output_tokens, tokens, input_rate, output_rate, markup_percent, platform_cost, cost,
              usage_source, created_at, cached_input_tokens, cache_write_tokens,
              reasoning_tokens, cached_input_rate, cache_write_rate, reasoning_output_rate)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::text[], $7::int4[], $8::int4[], $9::int4[], $10::numeric[],
                              $11::numeric[], $12::numeric[], $13::numeric[], $14::numeric[],
                              $15::text[], $16::timestamptz[], $17::int4[], $18::int4[],
                              $19::int4[], $20::numeric[], $21::numeric[], $22::numeric[])
         ON CONFLICT (request_id) DO NOTHING
         RETURNING request_id",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&tenants)
    .bind(&keys)
    .bind(&providers)
    .bind(&models)
    .bind(&ins)
    .bind(&outs)
    .bind(&totals)
    .bind(&in_rates)
    .bind(&out_rates)
    .bind(&markups)
    .bind(&platform)
    .bind(&costs)
    .bind(&sources)
    .bind(&times)
    .bind(&cached)
    .bind(&written)
    .bind(&reasoning)
    .bind(&cached_rates)
    .bind(&write_rates)
    .bind(&reasoning_rates);
    Ok(query.fetch_all(&mut **tx).await?.into_iter().collect())
}
