"""The seed notebook's SAE class, verbatim: the reference that saelab and the checks must match."""
import torch
import torch.nn as nn
import torch.nn.functional as F


# Verbatim from ../shared/reference/lab_c4_seed.txt ("SAE class (from main notebook)").
class SparseAutoencoder(nn.Module):
    def __init__(self, d_model, n_features):
        super().__init__()
        self.d_model = d_model
        self.n_features = n_features
        self.encoder = nn.Linear(d_model, n_features, bias=True)
        self.decoder_bias = nn.Parameter(torch.zeros(d_model))
        nn.init.kaiming_uniform_(self.encoder.weight, nonlinearity='relu')

    def encode(self, x):
        return F.relu(self.encoder(x))

    def decode(self, features):
        return F.linear(features, self.encoder.weight.T, self.decoder_bias)

    def forward(self, x):
        features = self.encode(x)
        return self.decode(features), features

    def compute_loss(self, x, sparsity_coef=1e-3):
        reconstructed, features = self.forward(x)
        recon_loss = F.mse_loss(reconstructed, x)
        sparsity_loss = features.abs().mean()
        return recon_loss + sparsity_coef * sparsity_loss, {
            'recon': recon_loss.item(),
            'sparsity': sparsity_loss.item(),
            'n_active': (features > 0).sum(dim=-1).float().mean().item()
        }
