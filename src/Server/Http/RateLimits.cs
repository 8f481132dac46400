using System.Globalization;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Http;

namespace TokenMill.Server.Http;

/// <summary>
/// Per-client rate limits for the generation endpoints: requests per minute and tokens per minute
/// (a request is charged its prompt tokens plus its whole completion budget, max_tokens × choices,
/// when it is admitted). A client is its API key when it sends one, else its address. Token buckets
/// refill continuously, so a client may burst up to a minute's allowance and then keeps the rate.
/// </summary>
public sealed class RateLimits : IDisposable
{
    readonly PartitionedRateLimiter<string>? _requests;
    readonly PartitionedRateLimiter<string>? _tokens;
    readonly int _tokensPerMinute;

    public RateLimits(int requestsPerMinute, int tokensPerMinute)
    {
        _tokensPerMinute = tokensPerMinute;
        if (requestsPerMinute > 0) _requests = Bucket(requestsPerMinute);
        if (tokensPerMinute > 0) _tokens = Bucket(tokensPerMinute);
    }

    static PartitionedRateLimiter<string> Bucket(int perMinute) => PartitionedRateLimiter.Create<string, string>(key =>
        RateLimitPartition.GetTokenBucketLimiter(key, _ => new TokenBucketRateLimiterOptions
        {
            TokenLimit = perMinute,
            // Refill a sixtieth every second rather than all at once each minute: no thundering herd at :00.
            TokensPerPeriod = Math.Max(1, perMinute / 60),
            ReplenishmentPeriod = TimeSpan.FromSeconds(perMinute >= 60 ? 1 : 60.0 / perMinute),
            QueueLimit = 0,
            AutoReplenishment = true,
        }), StringComparer.Ordinal);

    public static string ClientKey(HttpContext ctx)
    {
        string auth = ctx.Request.Headers.Authorization.ToString();
        return auth.Length > 0 ? "key:" + auth : "ip:" + ctx.Connection.RemoteIpAddress;
    }

    /// <summary>Charges one request; throws a 429 with Retry-After when the client is over its rate.</summary>
    public void AcquireRequest(HttpContext ctx)
    {
        if (_requests is null) return;
        using var lease = _requests.AttemptAcquire(ClientKey(ctx));
        if (!lease.IsAcquired) Refuse(ctx, lease, "requests per minute");
    }

    /// <summary>Charges a request's tokens (prompt + completion budget).</summary>
    public void AcquireTokens(HttpContext ctx, long tokens)
    {
        if (_tokens is null) return;
        if (tokens > _tokensPerMinute)
            throw ApiErrorException.BadRequest(
                $"this request needs {tokens} tokens (prompt plus max_tokens × choices), more than the per-minute limit of {_tokensPerMinute}; lower max_tokens",
                "max_tokens");
        using var lease = _tokens.AttemptAcquire(ClientKey(ctx), (int)tokens);
        if (!lease.IsAcquired) Refuse(ctx, lease, "tokens per minute");
    }

    static void Refuse(HttpContext ctx, RateLimitLease lease, string what)
    {
        int retry = lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? Math.Max(1, (int)Math.Ceiling(after.TotalSeconds)) : 1;
        ctx.Response.Headers.RetryAfter = retry.ToString(CultureInfo.InvariantCulture);
        throw new ApiErrorException(StatusCodes.Status429TooManyRequests, $"rate limit reached for {what}; retry in {retry} s", "rate_limit_error", null, "rate_limit_exceeded");
    }

    public void Dispose()
    {
        _requests?.Dispose();
        _tokens?.Dispose();
    }
}
